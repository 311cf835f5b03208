"""Olmo ChatML chat templates, Instruct and Think, with `{% generation %}` markers.

TRL ships no Olmo training template, and assistant-only loss needs the `{% generation %}`
markers to build its masks. The Think variant opens the assistant turn with `<think>` at
generation time (`add_generation_prompt=True`), as the Olmo 3 / Olmo Hybrid Think models do;
in training rows the `<think>` is part of the assistant content, so it sits inside the
generation block and carries loss (open-instruct once masked it out of DPO rows).
"""

from __future__ import annotations

from pathlib import Path

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EOS = "<|endoftext|>"

_BODY = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] }}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

TEMPLATES = {
    "olmo-instruct": _BODY + "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
    "olmo-think": _BODY + "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>' }}{%- endif -%}",
}


def resolve_template(name_or_path: str) -> str:
    """A built-in template name, or a path to a Jinja file."""
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    p = Path(name_or_path)
    if p.is_file():
        return p.read_text()
    raise ValueError(f"chat_template: unknown template {name_or_path!r} (built-in: {', '.join(TEMPLATES)}; or a .jinja file)")


def generation_prefix(template: str) -> str:
    """What the template appends after the prompt for generation ('' or '<think>')."""
    return THINK_OPEN if "assistant\\n<think>" in template else ""
