"""IFEval reward: does the completion follow the row's verifiable instructions?

Constraints come as IFEval's `instruction_id_list` + `kwargs` columns, or as one
`constraints` column holding (a JSON string of) `{"instruction_id_list": [...], "kwargs": [...]}`.
Mode "all" gives 1.0 only if every instruction holds (IFEval's prompt-level accuracy, a
sparse but unhackable signal); "partial" gives the fraction held (denser for small models).
`loose=True` applies IFEval's loose variants (drop first/last line, drop `*`).

>>> ifeval_reward(["hello world"], instruction_id_list=[["punctuation:no_comma",
...     "change_case:english_lowercase"]], kwargs=[[{}, {}]])
[1.0]
>>> ifeval_reward(["Hi, there"], constraints=['{"instruction_id_list": ["punctuation:no_comma",'
...     ' "detectable_format:title"], "kwargs": [{}, {}]}'], mode="partial")
[0.0]
"""

from __future__ import annotations

import json
from typing import Any

from reward import metrics
from reward._ifeval_checks import CHECKS
from reward._text import answer_text, column


def _loose_variants(text: str) -> list[str]:
    lines = text.split("\n")
    base = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return base + [v.replace("*", "") for v in base]


def parse_constraints(ids: Any, kwargs: Any, constraints: Any) -> list[tuple[str, dict]] | None:
    """[(instruction_id, kwargs)] for a row, or None if the row carries no constraints."""
    if constraints is not None:
        if isinstance(constraints, str):
            constraints = json.loads(constraints)
        ids, kwargs = constraints.get("instruction_id_list"), constraints.get("kwargs")
    if not ids:
        return None
    if isinstance(ids, str):
        ids = json.loads(ids) if ids.lstrip().startswith("[") else [ids]
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    kwargs = list(kwargs or []) + [{}] * (len(ids) - len(kwargs or []))
    # HF stores the union schema: every key present, unused ones None.
    return [(i, {k: v for k, v in (kw or {}).items() if v is not None}) for i, kw in zip(ids, kwargs)]


def check(instruction_id: str, response: str, kw: dict, loose: bool = False) -> bool | None:
    """Whether `response` follows one instruction; None if the id is unknown."""
    fn = CHECKS.get(instruction_id)
    if fn is None:
        metrics.incr("ifeval/unknown_instruction")
        return None
    try:
        variants = _loose_variants(response) if loose else [response]
        return any(v.strip() and fn(v, **kw) for v in variants)
    except (TypeError, ValueError, KeyError):  # missing/ill-typed kwargs in the data
        metrics.incr("ifeval/bad_kwargs")
        return False


def score_one(completion: Any, constraints: list[tuple[str, dict]] | None,
              mode: str = "all", loose: bool = False) -> float | None:
    if not constraints:
        return None
    text = answer_text(completion)
    if text is None:
        metrics.incr("ifeval/bad_completion")
        return 0.0
    results = [check(i, text, kw, loose) for i, kw in constraints]
    results = [r for r in results if r is not None]
    if not results:
        return None
    if mode == "partial":
        return sum(results) / len(results)
    return float(all(results))


def ifeval_reward(completions: list[Any], instruction_id_list: list[Any] | None = None,
                  kwargs: list[Any] | None = None, constraints: list[Any] | None = None,
                  mode: str = "all", loose: bool = False, **_: Any) -> list[float | None]:
    """TRL reward over IFEval-style constraint columns (see module docstring)."""
    n = len(completions)
    cols = {"ids": instruction_id_list, "kw": kwargs, "c": constraints}
    out: list[float | None] = []
    for comp, ids, kw, cons in zip(completions, column(cols, "ids", n), column(cols, "kw", n), column(cols, "c", n)):
        try:
            parsed = parse_constraints(ids, kw, cons)
        except (ValueError, AttributeError, TypeError):
            metrics.incr("ifeval/bad_constraints")
            out.append(None)
            continue
        out.append(score_one(comp, parsed, mode, loose))
    return out
