"""Format rewards: does the completion have the shape the chat template promises?

`format_think`: exactly one `<think>...</think>` at the start, then a non-empty answer
(reasoning models must close their thoughts and then actually answer). `format_instruct`:
no think tags at all (instruct models must not leak reasoning markup). Both optionally
enforce length limits in characters or whitespace words, scoring 0 past the limit, since
GRPO otherwise learns to ramble to the generation cap.

>>> format_think(["<think>hmm</think>42", "42", "<think>a</think><think>b</think>42", "<think>x</think>  "])
[1.0, 0.0, 0.0, 0.0]
>>> format_instruct(["42", "<think>x</think>42"]), format_instruct(["a b c"], max_words=2)
([1.0, 0.0], [0.0])
"""

from __future__ import annotations

from typing import Any

from reward import metrics
from reward._text import THINK_CLOSE, THINK_OPEN, completion_text


def within_limits(text: str, max_chars: int | None = None, max_words: int | None = None,
                  min_chars: int = 0) -> bool:
    if max_chars is not None and len(text) > max_chars:
        return False
    if max_words is not None and len(text.split()) > max_words:
        return False
    return len(text.strip()) >= min_chars


def is_think_format(text: str, think_in_prompt: bool = False) -> bool:
    """One leading think block, closed, followed by a non-empty answer.

    `think_in_prompt`: the chat template already opened `<think>` in the prompt, so the
    completion starts inside it and must contain only the closing tag.
    """
    body = text.lstrip()
    if think_in_prompt:
        body = THINK_OPEN + body
    if not body.startswith(THINK_OPEN) or body.count(THINK_OPEN) != 1 or body.count(THINK_CLOSE) != 1:
        return False
    thought, answer = body[len(THINK_OPEN):].split(THINK_CLOSE, 1)
    return bool(answer.strip())


def _score(completions: list[Any], ok, name: str, **limits: Any) -> list[float]:
    out = []
    for comp in completions:
        text = completion_text(comp)
        if text is None:
            metrics.incr(f"{name}/bad_completion")
            out.append(0.0)
            continue
        out.append(float(ok(text) and within_limits(text, **limits)))
    return out


def format_think(completions: list[Any], think_in_prompt: bool = False, max_chars: int | None = None,
                 max_words: int | None = None, **_: Any) -> list[float]:
    """1.0 for `<think>reasoning</think>answer` within limits, else 0.0."""
    return _score(completions, lambda t: is_think_format(t, think_in_prompt), "format_think",
                  max_chars=max_chars, max_words=max_words)


def format_instruct(completions: list[Any], max_chars: int | None = None, max_words: int | None = None,
                    **_: Any) -> list[float]:
    """1.0 for a non-empty answer with no think tags, within limits, else 0.0."""
    ok = lambda t: bool(t.strip()) and THINK_OPEN not in t and THINK_CLOSE not in t
    return _score(completions, ok, "format_instruct", max_chars=max_chars, max_words=max_words)


def length_reward(completions: list[Any], max_chars: int | None = None, max_words: int | None = None,
                  min_chars: int = 1, **_: Any) -> list[float]:
    """1.0 if the completion is within the length limits, else 0.0.

    >>> length_reward(["short", "x" * 50], max_chars=10)
    [1.0, 0.0]
    """
    return _score(completions, lambda t: True, "format_length",
                  max_chars=max_chars, max_words=max_words, min_chars=min_chars)
