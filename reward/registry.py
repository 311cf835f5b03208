"""Reward registry, weighted specs -> TRL `reward_funcs` / `reward_weights`, row routing.

A mixed dataset carries a `verifier` column (open-instruct calls it `dataset`) saying which
verifier owns each row: a label, or (Dolci) a list of labels zipped with a list of
`ground_truth` values. A routed reward scores only its rows and returns None elsewhere,
which TRL treats as "not applicable" (NaN, dropped by its nansum), so a row's total is the
weighted sum of its verifiers' scores, as open-instruct's `apply_verifiable_reward` sums them.
Rows without a verifier value go to every reward, and each reward returns None itself if the
row lacks its column. Format rewards apply to every row by default, as they judge shape.

>>> funcs, weights = build_reward_fn([{"name": "math", "weight": 1.0}, {"name": "format_instruct", "weight": 0.1}])
>>> [f.__name__ for f in funcs], weights
(['math', 'format_instruct'], [1.0, 0.1])
>>> funcs[0](["The answer is 4", "print(1)"], ground_truth=["4", None], verifier=["math", "code"])
[1.0, None]
>>> funcs[0](["The answer is 4"], ground_truth=[["4", "[{...}]"]], verifier=[["math", "ifeval"]])
[1.0]
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from reward import health, metrics
from reward.code import code_reward
from reward.coin import coin_flip
from reward.format import format_instruct, format_think, length_reward
from reward.ifeval import ifeval_reward
from reward.judge import judge_reward
from reward.math import math_reward

RewardFn = Callable[..., list]

REWARDS: dict[str, RewardFn] = {
    "math": math_reward,
    "ifeval": ifeval_reward,
    "code": code_reward,
    "format_think": format_think,
    "format_instruct": format_instruct,
    "format_length": length_reward,
    "judge": judge_reward,
    "coin_flip": coin_flip,  # throughput runs of random models only (reward/coin.py)
}

# Which `verifier` values each reward owns unless a spec says otherwise; None = every row.
# Labels are open-instruct's verifier names (`dataset` values in Dolci and Tulu 3 RLVR rows).
DEFAULT_ROUTES: dict[str, set[str] | None] = {
    "math": {"math"}, "ifeval": {"ifeval"}, "code": {"code", "code_stdio"},
    "judge": {"judge", "general-quality", "general-quality_ref"},
    "format_think": None, "format_instruct": None, "format_length": None, "coin_flip": None,
}


def _take(values: Any, idx: list[int], n: int) -> Any:
    # Only per-row columns are sliced; TRL also passes scalars such as trainer_state.
    if isinstance(values, (list, tuple)) and len(values) == n:
        return [values[i] for i in idx]
    return values


def row_units(label: Any, ground_truth: Any) -> list[tuple[str | None, bool, Any]] | None:
    """A row's (label, own ground truth?, ground truth) units, open-instruct's zip of `dataset` x `ground_truth`.

    A string label keeps the row's ground truth whole (a math row may list several accepted
    answers); a list of labels is zipped with the list of ground truths, one verifier call each.
    None when the two lists disagree in length (open-instruct asserts).

    >>> row_units(["math", "ifeval"], ["4", "[{...}]"])
    [('math', True, '4'), ('ifeval', True, '[{...}]')]
    >>> row_units("math", ["4", "four"]), row_units(None, "4")
    ([('math', False, ['4', 'four'])], [(None, False, '4')])
    """
    if not isinstance(label, (list, tuple)):
        return [(label, False, ground_truth)]
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == len(label):
        return [(str(lab), True, gt) for lab, gt in zip(label, ground_truth)]
    if len(label) == 1:
        return [(str(label[0]), isinstance(ground_truth, str), ground_truth)]
    return None


def takes(routes: set[str] | None, label: str | None) -> bool:
    """Whether a reward with these routes scores a unit with this label (labels match case-insensitively)."""
    return routes is None or label is None or label.lower() in routes


def route(fn: RewardFn, routes: set[str] | None, kwargs: dict[str, Any], name: str) -> RewardFn:
    """Wrap `fn` so it only sees rows whose `verifier` label(s) are in `routes`, with spec kwargs bound.

    A row with several labels of this reward gets the sum of their scores, as open-instruct sums
    every verifier's score on a row; labels of other rewards are summed by TRL's weighted sum.
    Every call counts, per reward, units scored / None / crashed and the score sum in
    `reward.metrics` (`reward.health` turns them into the logged reward health).
    """
    routes = None if routes is None else {r.lower() for r in routes}

    def call(units: list[tuple[int, str | None, bool, Any]], completions: list[Any], columns: dict[str, Any]):
        n = len(completions)
        idx = [u[0] for u in units]
        sub = {k: _take(v, idx, n) for k, v in columns.items()}
        sub["verifier"] = [u[1] for u in units]
        if any(u[2] for u in units):
            gts = _take(columns.get("ground_truth"), idx, n)
            gts = gts if isinstance(gts, list) else [gts] * len(units)
            sub["ground_truth"] = [u[3] if u[2] else g for u, g in zip(units, gts)]
        # Spec kwargs win over same-named dataset columns: the recipe is the authority.
        scores = list(fn([completions[i] for i in idx], **{**sub, **kwargs}))
        if len(scores) != len(units):
            raise ValueError(f"{name} returned {len(scores)} scores for {len(units)} rows")
        return scores

    def reward(completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        verifier = columns.get("verifier")
        verifier = verifier if isinstance(verifier, (list, tuple)) and len(verifier) == n else [None] * n
        gts = columns.get("ground_truth")
        gts = gts if isinstance(gts, (list, tuple)) and len(gts) == n else [None] * n
        units = []
        for i in range(n):
            if routes is None:  # a reward of every row (format...) scores it once, whatever its labels
                units.append((i, verifier[i], False, gts[i]))
                continue
            row = row_units(verifier[i], gts[i])
            if row is None:
                metrics.incr(f"{name}/label_mismatch")
                continue
            units += [(i, lab, own, gt) for lab, own, gt in row if takes(routes, lab)]
        out: list[float | None] = [None] * n
        if not units:
            return out
        try:
            scores = call(units, completions, columns)
        except Exception:  # find the rows that crash; a reward bug must not end the training run
            scores = []
            for u in units:
                try:
                    scores += call([u], completions, columns)
                except Exception as exc:
                    metrics.incr(f"{name}/crashed")
                    health.last_error[name] = f"{type(exc).__name__}: {exc}"[:300]
                    scores.append(_CRASH)
        for (i, *_), s in zip(units, scores):
            if s is _CRASH:
                continue
            if s is None:
                metrics.incr(f"{name}/none")
                continue
            metrics.incr(f"{name}/scored")
            metrics.incr(f"{name}/score_sum", float(s))
            out[i] = float(s) if out[i] is None else out[i] + float(s)
        return out

    reward.__name__ = reward.__qualname__ = name  # TRL logs rewards by __name__
    reward.__doc__ = fn.__doc__
    reward.routes, reward.base = routes, getattr(fn, "__name__", name)
    return reward


_CRASH = object()


def parse_spec(spec: dict[str, Any]) -> tuple[str, str, set[str] | None, float, dict[str, Any]]:
    """One recipe reward spec -> (name, alias, routes or None for every row, weight, remaining kwargs)."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}")
    weight = float(spec.pop("weight", 1.0))
    alias = spec.pop("alias", name)
    routes = spec.pop("verifier") if "verifier" in spec else DEFAULT_ROUTES[name]
    if routes == "*":
        routes = None
    elif isinstance(routes, str):
        routes = {routes}
    if routes is not None:
        routes = {str(r).lower() for r in routes}
    return name, alias, routes, weight, spec


def build_reward_fn(specs: list[dict[str, Any]]) -> tuple[list[RewardFn], list[float]]:
    """[{"name", "weight", "alias"?, "verifier"?, **kwargs}] -> (reward_funcs, reward_weights).

    `verifier`: a value or list of `verifier` column values the reward owns ("*" or None:
    all rows). `alias`: log name, needed when one reward appears twice with different kwargs.
    """
    funcs, weights = [], []
    for spec in specs:
        name, alias, routes, weight, spec = parse_spec(spec)
        # Fail at recipe load, not mid-training, when a reward lacks its configuration.
        required = [p.name for p in inspect.signature(REWARDS[name]).parameters.values()
                    if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
        missing = [k for k in required if k not in spec]
        if missing:
            raise ValueError(f"reward {name!r} needs {', '.join(missing)} in its spec")
        funcs.append(route(REWARDS[name], routes, spec, alias))
        weights.append(weight)
    return funcs, weights
