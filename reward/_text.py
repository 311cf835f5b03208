"""Helpers every reward needs: turning a TRL completion into text, and dropping think blocks.

TRL passes completions as strings (standard datasets) or as chat lists
`[{"role": "assistant", "content": ...}]` (conversational datasets); rewards must score both.

>>> completion_text([{"role": "assistant", "content": "hi"}])
'hi'
>>> strip_think("<think>scratch</think> The answer is 4")
'The answer is 4'
"""

from __future__ import annotations

import re
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Past this size a completion is degenerate; scoring only the tail keeps regexes and sympy
# from spending seconds on it while still seeing the final answer, which comes last.
MAX_CHARS = 100_000

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def completion_text(completion: Any) -> str | None:
    """Text of one completion, or None when it is not something we can read."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content")
        return content if isinstance(content, str) else None
    if isinstance(completion, (list, tuple)):
        # A chat list: join the assistant turns; anything else in a list is malformed.
        if not all(isinstance(m, dict) for m in completion):
            return None
        parts = [completion_text(m) for m in completion if m.get("role", "assistant") == "assistant"]
        parts = [p for p in parts if p is not None]
        return "".join(parts) if parts else None
    return None


def strip_think(text: str) -> str:
    """Remove reasoning; an unclosed <think> means the answer never started."""
    text = _THINK_BLOCK.sub("", text)
    if THINK_OPEN in text:
        text = text[: text.index(THINK_OPEN)]
    # A template may open <think> in the prompt, leaving only the closing tag here.
    if THINK_CLOSE in text:
        text = text[text.rindex(THINK_CLOSE) + len(THINK_CLOSE):]
    return text.strip()


def after_think(text: str) -> str:
    """open-instruct's `remove_thinking_section`: the text after the last `</think>`, `<answer>` tags
    dropped. Unlike `strip_think`, an unclosed `<think>` keeps everything (a truncated Think
    completion is scored on all it wrote, as open-instruct's IFEval verifier does).

    >>> after_think("<think>plan</think> <answer>Hi</answer>"), after_think("<think>cut off")
    ('Hi', '<think>cut off')
    """
    text = text.replace("<|assistant|>", "").strip().split(THINK_CLOSE)[-1]
    return text.replace("<answer>", "").replace("</answer>", "").strip()


def final_answer(text: str) -> str:
    """open-instruct's `extract_final_answer` (what its LLM judge sees): `<answer>...</answer>`,
    else the text after the first `</think>`, else the whole text.

    >>> final_answer("<think>x</think> The sky is blue."), final_answer("plain")
    ('The sky is blue.', 'plain')
    """
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL) or re.search(r"</think>(.*)", text, re.DOTALL)
    if m:
        return m.group(1).strip()
    cleaned = text.replace("<|assistant|>", "")
    return cleaned.strip() if cleaned != text else text


def raw_text(completion: Any, limit: int = MAX_CHARS) -> str | None:
    """Readable, size-capped text of a completion with its think block kept (None if unreadable)."""
    text = completion_text(completion)
    if text is None:
        return None
    return text[-limit:] if len(text) > limit else text


def answer_text(completion: Any, limit: int = MAX_CHARS) -> str | None:
    """Readable, think-stripped, size-capped text of a completion (None if unreadable)."""
    text = completion_text(completion)
    if text is None:
        return None
    if len(text) > limit:
        text = text[-limit:]
    return strip_think(text)


def column(columns: dict[str, Any], name: str, n: int) -> list[Any]:
    """Column `name` as a list of n values (None-filled when the dataset lacks it)."""
    values = columns.get(name)
    if values is None:
        return [None] * n
    values = list(values)
    return values + [None] * (n - len(values)) if len(values) < n else values[:n]
