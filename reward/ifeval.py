"""IFEval reward: does the completion follow the row's verifiable instructions?

Constraints come in any of these shapes:
* Dolci / open-instruct (`ground_truth`, label `ifeval`): the string
  `"[{'instruction_id': [...], 'kwargs': [...]}]"`, read with `ast.literal_eval` and its first
  element taken (which may itself be JSON), exactly as open-instruct's `IFEvalVerifier`;
* Google IFEval's `instruction_id_list` + `kwargs` columns;
* one `constraints` column holding (a JSON string of) `{"instruction_id_list", "kwargs"}`.
Instruction ids are open-instruct's IFEvalG registry: Google's 25 (`_ifeval_checks.py`) plus
the 29 IFEvalG adds (`_ifevalg_checks.py`).

Scoring follows open-instruct: the text after the last `</think>` (`_text.after_think`), and
mode "partial" (the default) gives the fraction of instructions held; "all" gives 1.0 only if
every one holds (IFEval's prompt-level accuracy). `loose=True` applies IFEval's loose variants.

>>> ifeval_reward(["hello world"], instruction_id_list=[["punctuation:no_comma",
...     "change_case:english_lowercase"]], kwargs=[[{}, {}]])
[1.0]
>>> ifeval_reward(["<think>Plan, then write.</think>Hi, there"],
...     ground_truth=["[{'instruction_id': ['punctuation:no_comma', 'detectable_format:title'], 'kwargs': [None, {}]}]"])
[0.0]
>>> ifeval_reward(["<think>Plan, then write.</think><<Hi>> there"],
...     ground_truth=["[{'instruction_id': ['punctuation:no_comma', 'detectable_format:title'], 'kwargs': [None, {}]}]"])
[1.0]
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from reward import metrics
from reward._ifeval_checks import CHECKS as GOOGLE_CHECKS
from reward._ifevalg_checks import CHECKS as IFEVALG_CHECKS
from reward._text import after_think, column, raw_text

CHECKS = {**GOOGLE_CHECKS, **IFEVALG_CHECKS}


def _loose_variants(text: str) -> list[str]:
    lines = text.split("\n")
    base = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return base + [v.replace("*", "") for v in base]


def parse_ground_truth(gt: Any) -> dict:
    """open-instruct's reading of an IFEval ground truth: literal_eval, first element, maybe JSON."""
    if isinstance(gt, str):
        try:
            gt = ast.literal_eval(gt)
        except (ValueError, SyntaxError):
            gt = json.loads(gt)  # a plain JSON object (true/null spelled the JSON way)
    if isinstance(gt, (list, tuple)):
        gt = gt[0]
    if isinstance(gt, str):
        gt = json.loads(gt)
    if not isinstance(gt, dict):
        raise ValueError("IFEval ground truth must hold a dict of instruction ids and kwargs")
    return gt


def parse_constraints(ids: Any, kwargs: Any, constraints: Any, ground_truth: Any = None) -> list[tuple[str, dict]] | None:
    """[(instruction_id, kwargs)] for a row, or None if the row carries no constraints."""
    if ground_truth is not None and ids is None and constraints is None:
        gt = parse_ground_truth(ground_truth)
        ids = gt.get("instruction_id", gt.get("instruction_id_list"))
        if ids is not None and not ids:  # open-instruct: an empty list scores 0, not "no constraints"
            return []
        kwargs = gt.get("kwargs")
    elif constraints is not None:
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
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, re.error):  # missing/ill-typed kwargs
        metrics.incr("ifeval/bad_kwargs")
        return False


def score_one(completion: Any, constraints: list[tuple[str, dict]] | None,
              mode: str = "partial", loose: bool = False) -> float | None:
    if constraints is None:
        return None
    text = raw_text(completion)
    if text is None:
        metrics.incr("ifeval/bad_completion")
        return 0.0
    text = after_think(text)
    if not constraints or not text:  # open-instruct: empty answer or empty instruction list -> 0
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
                  ground_truth: list[Any] | None = None, mode: str = "partial", loose: bool = False,
                  **_: Any) -> list[float | None]:
    """TRL reward over IFEval-style constraint columns (see module docstring)."""
    n = len(completions)
    cols = {"ids": instruction_id_list, "kw": kwargs, "c": constraints, "gt": ground_truth}
    out: list[float | None] = []
    for comp, ids, kw, cons, gt in zip(completions, column(cols, "ids", n), column(cols, "kw", n),
                                       column(cols, "c", n), column(cols, "gt", n)):
        try:
            parsed = parse_constraints(ids, kw, cons, gt)
        except (ValueError, AttributeError, TypeError, KeyError, IndexError, SyntaxError):
            metrics.incr("ifeval/bad_constraints")
            out.append(None)
            continue
        out.append(score_one(comp, parsed, mode, loose))
    return out
