"""Checks that a recipe's settings and every row of its data fit the stage that will use them,
before any model loads: `posttrain run` (and `--dry-run`) and `posttrain mix --stage-kind KIND`.

Two kinds of rule live here:

* field ranges: every numeric recipe field has a rule in `FIELD_RULES` (a test walks the
  recipe dataclasses and fails on a numeric field without one), so `max_length: 0` is a
  one-line error at load instead of a ZeroDivisionError after the model has loaded;
* row rules per stage kind, run on the canonical rows a mix resolves to (posttrain/data/formats.py
  decides formats): SFT rows end with a non-empty assistant turn (tool calls and `environment`
  turns may come before it); DPO rows have a prompt and a chosen and a rejected answer that end
  with the assistant and differ; RL rows have a prompt and, for every configured reward that needs
  one and is routed to the row (its `verifier` column), a ground truth; eval rows a ground truth.

A failing row is a one-line `MixError` naming the file, source and row; with `skip_invalid: true`
in the mix it is dropped instead, and the manifest counts drops per reason. A mix that resolves
to no rows, or a source that was asked for rows and gave none, is an error too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from posttrain.data.mix import MixError, ResolvedMix, resolve_mix

DEFAULT_REWARDS = [{"name": "math"}]  # a GRPO stage's default (posttrain/recipe.py)
NEEDS_FORMAT = {"sft": "messages", "dpo": "preference", "grpo": "prompt"}
# Columns that hold a reward's ground truth (any one is enough); rewards not listed need none.
# open-instruct's RLVR rows carry every verifier's truth in `ground_truth` (a list in Dolci).
TRUTH_COLUMNS = {"math": ("ground_truth",), "code": ("tests", "ground_truth"),
                 "ifeval": ("instruction_id_list", "constraints", "ground_truth")}


# ---- field ranges ---------------------------------------------------------------------------------
def _rule(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
          also: tuple = ()) -> tuple[Callable[[float], bool], str]:
    def ok(x: float) -> bool:
        if x in also:
            return True
        if not math.isfinite(x):
            return False
        return ((lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or (x < hi if hi_open else x <= hi)))
    lo_s = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
    hi_s = "" if hi is None else (f"< {hi:g}" if hi_open else f"<= {hi:g}")
    text = " and ".join(s for s in (lo_s, hi_s) if s) or "a finite number"
    return ok, text + "".join(f" (or {a:g})" for a in also)


POSITIVE_INT = _rule(1)
# "Class.field" rules win over "field" ones. Every numeric field of posttrain/recipe.py is here.
FIELD_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "seed": _rule(0, 2**32 - 1),  # numpy's seed range (transformers' set_seed seeds numpy)
    "max_examples": _rule(0), "max_new_tokens": POSITIVE_INT, "batch_size": POSITIVE_INT,
    "learning_rate": _rule(0, 1, lo_open=True),
    "warmup_ratio": _rule(0, 1, hi_open=True),
    "num_epochs": _rule(0, lo_open=True),
    "max_steps": _rule(1, also=(-1,)),
    "max_length": POSITIVE_INT, "micro_batch_size": POSITIVE_INT,
    "weight_decay": _rule(0),
    "max_grad_norm": _rule(0),  # 0 turns clipping off (transformers)
    "adam_beta1": _rule(0, 1, hi_open=True), "adam_beta2": _rule(0, 1, hi_open=True),
    "mini_batches": POSITIVE_INT,
    "local_eval_every": _rule(0), "local_eval_examples": POSITIVE_INT,  # 0 = no local evals
    "logging_steps": POSITIVE_INT, "save_steps": POSITIVE_INT,
    "batch_tokens": POSITIVE_INT,
    "DPOStage.beta": _rule(0, lo_open=True), "sft_weight": _rule(0),
    "batch_pairs": POSITIVE_INT, "rejected_max_new_tokens": POSITIVE_INT,
    "rollouts_per_prompt": _rule(2),  # a group of one has no advantage (TRL needs num_generations >= 2)
    "prompts_per_step": POSITIVE_INT,
    "GRPOStage.beta": _rule(0),
    "epsilon": _rule(0, lo_open=True), "epsilon_high": _rule(0, lo_open=True),
    "temperature": _rule(0, lo_open=True),
    "max_prompt_length": POSITIVE_INT, "max_completion_length": POSITIVE_INT,
    "tis_cap": _rule(0, lo_open=True),
    "skip_solved_rate": _rule(0, lo_open=True),  # 0 would skip every prompt; above 1 never skips
    "solve_threshold": _rule(),
    "reward_crash_limit": _rule(0, 1),
    "async_steps": _rule(0), "weight_sync_steps": POSITIVE_INT,  # the bound between them: recipe_checks._check_async
    "async_lookahead": _rule(0),  # None = the bound's most; its upper bound: recipe_checks._check_async
    "vllm_gpu_memory_utilization": _rule(0, 1, lo_open=True),
}


def field_problem(owner: str, name: str, value: Any) -> str | None:
    """What is wrong with a numeric field's value, or None. `owner` is its dataclass's name.

    >>> field_problem("SFTStage", "max_length", 0)
    'must be >= 1, got 0'
    >>> field_problem("GRPOStage", "beta", 0.0) is None, field_problem("DPOStage", "beta", 0.0)
    (True, 'must be > 0, got 0.0')
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    rule = FIELD_RULES.get(f"{owner}.{name}") or FIELD_RULES.get(name)
    if rule is None:  # a new field without a rule: tests/test_bad_inputs.py fails, a run does not
        return None
    ok, text = rule
    return None if ok(value) else f"must be {text}, got {value}"


# ---- rows -----------------------------------------------------------------------------------------
def present(v: Any) -> bool:
    """A usable value: not None, not blank, not an empty or all-blank list/dict.

    >>> [present(x) for x in (None, "", " ", [], [""], {}, "4", 0, ["4"], {"a": 1})]
    [False, False, False, False, False, False, True, True, True, True]
    """
    if v is None:
        return False
    if isinstance(v, str):
        return bool(v.strip())
    if isinstance(v, (list, tuple)):
        return any(present(x) for x in v)
    if isinstance(v, dict):
        return bool(v)
    return True


def _ends_with_answer(msgs: Any, what: str) -> str | None:
    if not isinstance(msgs, list) or not msgs:
        return f"{what} is empty"
    last = msgs[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        role = last.get("role") if isinstance(last, dict) else type(last).__name__
        return f"{what}: last turn is {role!r}, not the assistant's"
    if not (present(last.get("content")) or present(last.get("function_calls")) or present(last.get("tool_calls"))):
        return f"{what}: last assistant turn is empty"
    return None


def reward_truths(rewards: list[dict]) -> list[tuple[str, set[str] | None, tuple[str, ...]]]:
    """(reward name, verifier labels it owns or None for all rows, truth columns) per reward that
    needs a truth; routes as reward/registry.py reads a spec."""
    from reward.registry import parse_spec
    out = []
    for spec in rewards:
        name, _, routes, _, _ = parse_spec(spec)
        if name in TRUTH_COLUMNS:
            out.append((name, routes, TRUTH_COLUMNS[name]))
    return out


def _missing_truth(row: dict, truths: list) -> str | None:
    """A unit (a verifier label with its ground truth, open-instruct's zip) that a truth-needing
    reward takes but that has no truth to check against."""
    from reward.registry import row_units, takes
    label = row.get("verifier")
    units = row_units(label if present(label) else None, row.get("ground_truth"))
    if units is None:
        return "verifier and ground_truth lists differ in length"
    for name, routes, cols in truths:
        for lab, own, gt in units:
            if takes(routes, lab) and not (present(gt) if own else any(present(row.get(c)) for c in cols)):
                return f"no ground truth for reward {name} (column {' or '.join(cols)})"
    return None


class WrongFormat(Exception):
    """Rows of another format than the stage reads: a mix-level error, not a per-row drop."""


def row_format(row: dict) -> str:
    """The canonical format of a resolved row (posttrain/data/formats.py)."""
    return "messages" if "messages" in row else "preference" if "chosen" in row else "prompt"


def row_check(kind: str, rewards: list[dict] | None = None, needs_truth: bool = False) -> Callable[[dict], str | None]:
    """A check for one canonical row of a `kind` stage ("sft" | "dpo" | "grpo" | "eval"):
    returns what is wrong, or None. `needs_truth`: every row needs `ground_truth` (eval rows always do:
    accuracy is scored against it)."""
    truths = reward_truths(DEFAULT_REWARDS if rewards is None else rewards) if kind == "grpo" else []
    want = NEEDS_FORMAT.get(kind)

    def check(row: dict) -> str | None:
        if want and row_format(row) != want:
            raise WrongFormat(row_format(row))
        if kind == "sft":
            problem = _ends_with_answer(row.get("messages"), "messages")
        elif kind == "dpo":
            problem = None if present(row.get("prompt")) else "no prompt"
            for k in ("chosen", "rejected"):
                problem = problem or _ends_with_answer(row.get(k), k)
            if problem is None and row.get("chosen") == row.get("rejected"):
                problem = "chosen and rejected are the same"
        elif kind == "grpo":
            prompt = row.get("prompt")
            problem = None if isinstance(prompt, list) and any(
                isinstance(m, dict) and present(m.get("content")) for m in prompt) else "no prompt"
            problem = problem or _missing_truth(row, truths)
        else:
            problem = None
        if problem is None and (needs_truth or kind == "eval") and not present(row.get("ground_truth")):
            problem = "no ground_truth"
        return problem
    return check


def check_resolved(m: ResolvedMix, kind: str, who: str) -> None:
    """Mix-level rules once the rows are in: the format the stage kind reads, and some rows
    from every source that was asked for rows. `who` names the consumer (`stages.rl.mix`)."""
    mix = m.manifest["mix"]
    for i, s in enumerate(m.manifest["sources"]):
        if s["taken"] == 0 and s.get("requested") != 0:
            why = ", ".join(f"{n} {k}" for k, n in (s.get("invalid_reasons") or {}).items())
            raise MixError(f"{mix}: sources.{i} ({s['path']}): no usable rows ({s['available']} read, "
                           f"{s['invalid_dropped']} invalid{': ' + why if why else ''}, {s['filtered']} filtered)")
    if not m.rows:
        raise MixError(f"{mix}: resolves to no rows (every source has count 0)")
    want = NEEDS_FORMAT.get(kind)
    if want and m.format != want:
        raise MixError(f"{mix}: format {m.format}: {who} ({kind}) needs {want} rows")


def resolve_for(path, kind: str, who: str, rewards: list[dict] | None = None,
                needs_truth: bool = False) -> ResolvedMix:
    """resolve_mix with the row rules of a `kind` stage, then the mix-level rules."""
    try:
        m = resolve_mix(path, check=row_check(kind, rewards, needs_truth))
    except WrongFormat as e:
        raise MixError(f"{path}: format {e}: {who} ({kind}) needs {NEEDS_FORMAT[kind]} rows") from None
    check_resolved(m, kind, who)
    return m


def reason_counts(m: ResolvedMix) -> dict[str, int]:
    """Dropped rows per reason over all sources (skip_invalid)."""
    out: dict[str, int] = {}
    for s in m.manifest["sources"]:
        for k, n in (s.get("invalid_reasons") or {}).items():
            out[k] = out.get(k, 0) + n
    return out
