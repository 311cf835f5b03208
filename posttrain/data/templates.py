"""Chat templates with `{% generation %}` markers: AI2's Olmo 3 templates and the tiny demo's.

`olmo3-instruct` / `olmo3-think` are open-instruct's `olmo` / `olmo_thinker` (CHAT_TEMPLATES in
open_instruct/dataset_transformation.py, allenai/open-instruct@e6c3044a), kept verbatim below
and changed in two ways that do not change what they render: `{% generation %}` markers around
each assistant turn's content, calls and end token (TRL's assistant-only loss builds its masks
from them), and, when a recipe asks (`chat_template_system`), another default system turn. They
add a system turn when a conversation has none, render AI2-format tools (`functions` on a
system or user message, `function_calls` on an assistant message, tool outputs as role
`environment`), close earlier assistant turns with `<|im_end|>` and the last one with the
tokenizer's eos token (`<|endoftext|>` for dolma2), and olmo3-think opens a generated turn
with `<think>`. With the real tokenizer `<think>` is several BPE tokens; in training rows it is
part of the assistant content, so it sits inside the generation block and carries loss.

`olmo-instruct` / `olmo-think` are the tiny demo's plain ChatML templates (every turn ends in
`<|im_end|>`, no default system turn); they stay as they are so the tiny run does not change.
"""

from __future__ import annotations

from functools import lru_cache
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

# ---- open-instruct's templates, verbatim (allenai/open-instruct@e6c3044a, dataset_transformation.py) ----
_OI_TOOLS_AND_TURNS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + message['content'] }}"
    "{% if message.get('functions', none) is not none %}"
    "{{ ' <functions>' + message['functions'] + '</functions><|im_end|>\n' }}"
    "{% else %}"
    "{{ ' You do not currently have access to any functions. <functions></functions><|im_end|>\n' }}"
    "{% endif %}"
    "{% elif message['role'] == 'user' %}"
    "{% if message.get('functions', none) is not none %}"
    "{{ '<|im_start|>user\n' + message['content'] + '\n' + '<functions>' + message['functions'] + '</functions><|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>user\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% if message.get('content', none) is not none %}"
    "{{ message['content'] }}"
    "{% endif %}"
    "{% if message.get('function_calls', none) is not none %}"
    "{{ '<function_calls>' + message['function_calls'] + '</function_calls>' }}"
    "{% endif %}"
    "{% if not loop.last %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% else %}"
    "{{ eos_token }}"
    "{% endif %}"
    "{% elif message['role'] == 'environment' %}"
    "{{ '<|im_start|>environment\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
)
_OI_HAS_SYSTEM = "{% set has_system = messages|selectattr('role', 'equalto', 'system')|list|length > 0 %}"
_OI_OLMO_DEFAULT = (
    "{% if not has_system %}"
    "{{ '<|im_start|>system\nYou are OLMo, a helpful function-calling AI assistant built by Ai2. Your date cutoff is November 2024, and your model weights are available at https://huggingface.co/allenai. You do not currently have access to any functions. <functions></functions><|im_end|>\n' }}"
    "{% endif %}"
)
_OI_THINKER_DEFAULT = (
    "{% if not has_system %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}"
    "{% endif %}"
)
OPEN_INSTRUCT = {
    "olmo": _OI_HAS_SYSTEM + _OI_OLMO_DEFAULT + _OI_TOOLS_AND_TURNS
    + "{{ '<|im_start|>assistant\n' }}" "{% endif %}" "{% endfor %}",
    "olmo_thinker": _OI_HAS_SYSTEM + _OI_THINKER_DEFAULT + _OI_TOOLS_AND_TURNS
    + "{{ '<|im_start|>assistant\n<think>' }}" "{% endif %}" "{% endfor %}",
}
"""open-instruct's `olmo` and `olmo_thinker` CHAT_TEMPLATES, character for character."""

# The assistant turn, re-cut so that content, calls and the end token sit in one generation block
# and the newline after `<|im_end|>` outside it; the text rendered is the same.
_OI_ASSISTANT = (
    "{% if message.get('content', none) is not none %}"
    "{{ message['content'] }}"
    "{% endif %}"
    "{% if message.get('function_calls', none) is not none %}"
    "{{ '<function_calls>' + message['function_calls'] + '</function_calls>' }}"
    "{% endif %}"
    "{% if not loop.last %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% else %}"
    "{{ eos_token }}"
    "{% endif %}"
)
_MARKED_ASSISTANT = (
    "{% generation %}"
    "{% if message.get('content', none) is not none %}"
    "{{ message['content'] }}"
    "{% endif %}"
    "{% if message.get('function_calls', none) is not none %}"
    "{{ '<function_calls>' + message['function_calls'] + '</function_calls>' }}"
    "{% endif %}"
    "{% if not loop.last %}"
    "{{ '<|im_end|>' }}"
    "{% else %}"
    "{{ eos_token }}"
    "{% endif %}"
    "{% endgeneration %}"
    "{% if not loop.last %}"
    "{{ '\n' }}"
    "{% endif %}"
)
_NO_FUNCTIONS = " You do not currently have access to any functions. <functions></functions>"
NO_DEFAULT_SYSTEM = "none"
"""`chat_template_system` value that drops the default system turn."""


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r") + "'"


def _replace_once(s: str, old: str, new: str) -> str:
    assert s.count(old) == 1, f"template piece not found exactly once: {old[:60]!r}"
    return s.replace(old, new)


def olmo3_template(think: bool, default_system: str | None = None) -> str:
    """open-instruct's `olmo_thinker` (think) or `olmo` template with generation markers.

    `default_system`: None keeps AI2's default system turn; "none" adds none; any other text is
    the default system turn, rendered exactly as that text given as a system message would be."""
    src = OPEN_INSTRUCT["olmo_thinker" if think else "olmo"]
    out = _replace_once(src, _OI_ASSISTANT, _MARKED_ASSISTANT)
    if default_system is not None:
        default = _OI_THINKER_DEFAULT if think else _OI_OLMO_DEFAULT
        new = "" if default_system == NO_DEFAULT_SYSTEM else (
            "{% if not has_system %}"
            "{{ '<|im_start|>system\n' + " + _jinja_str(default_system + _NO_FUNCTIONS) + " + '<|im_end|>\n' }}"
            "{% endif %}")
        out = _replace_once(out, default, new)
    return out


TEMPLATES = {
    "olmo-instruct": _BODY + "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
    "olmo-think": _BODY + "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>' }}{%- endif -%}",
    "olmo3-instruct": olmo3_template(think=False),
    "olmo3-think": olmo3_template(think=True),
}
FAMILIES = {"olmo-instruct": "olmo", "olmo-think": "olmo", "olmo3-instruct": "olmo3", "olmo3-think": "olmo3"}
"""Built-in template -> family; each family has an `-instruct` and a `-think` member."""


def resolve_template(name_or_path: str, default_system: str | None = None) -> str:
    """A built-in template name, or a path to a Jinja file. `default_system` (olmo3-* only): None
    keeps the template's default system turn, "none" drops it, other text replaces it."""
    if name_or_path in ("olmo3-instruct", "olmo3-think"):
        return olmo3_template(name_or_path == "olmo3-think", default_system)
    if default_system is not None:
        raise ValueError(f"chat_template_system: only the olmo3-* templates have a default system turn "
                         f"(chat_template is {name_or_path!r})")
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    p = Path(name_or_path)
    if p.is_file():
        return p.read_text()
    raise ValueError(f"chat_template: unknown template {name_or_path!r} (built-in: {', '.join(TEMPLATES)}; or a .jinja file)")


@lru_cache(maxsize=32)
def generation_prefix(template: str) -> str:
    """What the template appends after `<|im_start|>assistant\\n` for generation ('' or '<think>'),
    found by rendering it (templates write the newline as a Jinja escape or a real newline)."""
    if not template:
        return ""
    from transformers.utils.chat_template_utils import _compile_jinja_template
    try:
        text = _compile_jinja_template(template).render(
            messages=[{"role": "user", "content": "x"}], add_generation_prompt=True, eos_token=EOS,
            bos_token="", pad_token="", tools=None)
    except Exception:
        return ""
    head = f"{IM_START}assistant\n"
    return text[text.rindex(head) + len(head):] if head in text else ""
