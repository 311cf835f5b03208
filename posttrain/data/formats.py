"""Canonical row formats, and how a source row becomes one (`canonicalize`):

  messages    {"messages": [{"role", "content", ...}, ...], ...extra columns}
  preference  {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs], ...extra columns}
  prompt      {"prompt": [msgs], "ground_truth": str | list, ...extra columns (e.g. verifier)}
A source's format comes from its columns (`format_from_columns`) and every row is checked
against it. What each format accepts, from the Dolci dataset cards and open-instruct's transforms:
messages rows keep every message field (`functions`, `function_calls`, role `environment`: AI2's
tool rows) and prompt/completion rows become `messages`; preference rows are TRL's
prompt/chosen/rejected or whole chosen/rejected conversations (Dolci DPO), split into the shared
prompt and the final answers so the prompt is rendered once; prompt rows take `messages` (the
answer dropped), a message list or a flat `prompt` string, with `ground_truth` / `dataset` kept
as they come (open-instruct zips list-valued ones).
"""

from __future__ import annotations

from typing import Any

FORMATS = ("messages", "preference", "prompt")
ROLES = ("system", "user", "assistant", "tool", "environment")
"""`environment`: tool output in AI2's format (the olmo3 templates); `tool`: the same in HF's."""
_FORMAT_COLUMNS = {"messages", "prompt", "completion", "chosen", "rejected", "source_prompt"}


class BadRow:
    """A row that could not even be parsed; carries its reason to the validator."""
    def __init__(self, why: str):
        self.why = why


def _message(m: dict) -> dict:
    """A message with its role, content and any other fields it carries (AI2 tool rows: `functions`
    on a system/user turn, `function_calls` on an assistant turn); None-valued fields are dropped
    (a parquet struct column gives every message every field)."""
    return {"role": m.get("role"), "content": m.get("content"),
            **{k: v for k, v in m.items() if k not in ("role", "content") and v is not None}}


def _as_messages(x: Any, role: str) -> list[dict]:
    if isinstance(x, str):
        return [{"role": role, "content": x}]
    if isinstance(x, list) and all(isinstance(m, dict) for m in x):
        return [_message(m) for m in x]
    raise ValueError(f"expected a string or a list of messages, got {type(x).__name__}")


def _check_messages(msgs: list[dict], what: str) -> None:
    if not msgs:
        raise ValueError(f"{what} is empty")
    for i, m in enumerate(msgs):
        if m["role"] not in ROLES:
            raise ValueError(f"{what}[{i}]: unknown role {m['role']!r} (known: {', '.join(ROLES)})")
        # An assistant turn that only calls functions may have no text (the olmo3 templates allow it).
        if not isinstance(m["content"], str) and not (m["role"] == "assistant" and m["content"] is None
                                                      and m.get("function_calls") is not None):
            raise ValueError(f"{what}[{i}]: message content must be a string")


def _trains_something(m: dict) -> bool:
    return m["role"] == "assistant" and bool((m["content"] or "").strip() or m.get("function_calls"))


def present_columns(row: dict) -> set[str]:
    return {k for k, v in row.items() if v is not None}


def format_from_columns(columns: set[str] | list[str]) -> str:
    """A source's format from its column names (after the mix's renames):

    - `chosen` + `rejected`: preference (TRL's prompt/chosen/rejected, or whole conversations as in
      Dolci-Instruct-DPO / Dolci-Think-DPO-7B, with or without a `prompt` column);
    - `completion`, or `messages` without a verifier: messages (SFT; a `ground_truth` column alone,
      as in held-out rows, does not make it RL);
    - `messages` + `ground_truth` + a verifier (`dataset`, open-instruct's name, or `verifier`):
      prompt (Dolci-Think-RL-7B);
    - `prompt` or `source_prompt`: prompt (Dolci-Instruct-RL, TRL prompt datasets).

    >>> format_from_columns({"messages", "ground_truth", "dataset"}), format_from_columns({"messages", "id"})
    ('prompt', 'messages')
    """
    c = set(columns)
    if {"chosen", "rejected"} <= c:
        return "preference"
    if "completion" in c:
        return "messages"
    if "messages" in c:
        return "prompt" if "ground_truth" in c and c & {"dataset", "verifier"} else "messages"
    if c & {"prompt", "source_prompt"}:
        return "prompt"
    raise ValueError(f"cannot tell the format from columns {sorted(c)} (want messages, prompt/completion, "
                     "chosen/rejected (+ prompt), messages or prompt + ground_truth)")


def infer_format(row: dict) -> str:
    return format_from_columns(present_columns(row))


def _split_conversations(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Whole chosen/rejected conversations -> (prompt, chosen turn, rejected turn). As open-instruct's
    preference_tulu transform assumes, only the last message differs and it holds the answer."""
    for k, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError(f"{k}: the conversation must end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected conversations differ before their last message")
    return chosen[:-1], chosen[-1:], rejected[-1:]


def _rl_prompt(row: dict) -> list[dict]:
    """The RL prompt: `messages` without its trailing assistant answer (open-instruct rlvr_tokenize
    drops the last message of a multi-turn row), a `prompt` message list, or a flat `prompt` string.
    Dolci-Instruct-RL's `prompt` is open-instruct's raw prompt, "role: content" lines; its
    `source_prompt` is used when it renders to exactly that string, else a leading "user: " is cut."""
    if row.get("messages") is not None:
        msgs = _as_messages(row["messages"], "user")
        while len(msgs) > 1 and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return msgs
    p, src = row.get("prompt"), row.get("source_prompt")
    if isinstance(p, str):
        if isinstance(src, list) and all(isinstance(m, dict) for m in src) and \
                p == "\n".join(f"{m.get('role')}: {m.get('content')}" for m in src):
            return _as_messages(src, "user")
        return [{"role": "user", "content": p[len("user: "):] if p.startswith("user: ") else p}]
    if p is not None:
        return _as_messages(p, "user")
    if src is not None:
        return _as_messages(src, "user")
    raise ValueError("missing column 'messages' or 'prompt'")


def canonicalize(row: Any, fmt: str) -> dict:
    """Validate one row and return it in canonical form; ValueError says what is wrong."""
    if isinstance(row, BadRow):
        raise ValueError(row.why)
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a mapping, got {type(row).__name__}")
    own = infer_format(row) if present_columns(row) & _FORMAT_COLUMNS else None
    if own is not None and own != fmt and not (fmt == "prompt" and own == "messages"):
        raise ValueError(f"its columns ({', '.join(sorted(present_columns(row) & _FORMAT_COLUMNS))}) make it a "
                         f"{own!r} row, but the source's format is {fmt!r}")
    extra = {k: v for k, v in row.items() if k not in ("messages", "prompt", "completion", "chosen", "rejected")}
    if fmt == "messages":
        if row.get("messages") is not None:
            msgs = _as_messages(row["messages"], "user")
        elif row.get("prompt") is not None and row.get("completion") is not None:
            msgs = _as_messages(row["prompt"], "user") + _as_messages(row["completion"], "assistant")
        else:
            raise ValueError("missing column 'messages' (or 'prompt' + 'completion')")
        _check_messages(msgs, "messages")
        if not any(_trains_something(m) for m in msgs):
            raise ValueError("no non-empty assistant message to train on")
        return {"messages": msgs, **extra}
    if fmt == "preference":
        for k in ("chosen", "rejected"):
            if row.get(k) is None:
                raise ValueError(f"missing column {k!r}")
        chosen, rejected = _as_messages(row["chosen"], "assistant"), _as_messages(row["rejected"], "assistant")
        if any(m["role"] != "assistant" for m in chosen + rejected):
            # Whole conversations (Dolci DPO sets): the prompt is inside them. A `prompt` column
            # beside them (Dolci-Think-DPO-7B) repeats it, and is ignored as open-instruct does.
            prompt, chosen, rejected = _split_conversations(chosen, rejected)
            if not prompt:
                raise ValueError("chosen/rejected hold no prompt before the answer")
        elif row.get("prompt") is not None:
            prompt = _as_messages(row["prompt"], "user")
        else:
            raise ValueError("missing column 'prompt' (chosen/rejected hold only the answers)")
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        for k, v in out.items():
            _check_messages(v, k)
        return {**out, **extra}
    if fmt == "prompt":
        prompt = _rl_prompt(row)
        _check_messages(prompt, "prompt")
        if row.get("ground_truth") is not None:
            gt = row["ground_truth"]
            extra["ground_truth"] = gt if isinstance(gt, (str, list, dict)) else str(gt)
        return {"prompt": prompt, **extra}
    raise ValueError(f"unknown format {fmt!r}")


def prompt_text(row: dict) -> str:
    """The user-visible prompt of a canonical row, for decontamination."""
    msgs = row.get("prompt") or [m for m in row.get("messages", []) if m["role"] != "assistant"]
    return "\n".join(m["content"].strip() for m in msgs)
