"""Reward registry, weighted specs -> TRL `reward_funcs` / `reward_weights`, row routing.

A mixed dataset carries a `verifier` column (open-instruct calls it `dataset`) saying which
verifier owns each row; a routed reward scores only its rows and returns None elsewhere,
which TRL treats as "not applicable" (NaN, dropped by its nansum). Rows without a verifier
value go to every reward, and each reward returns None itself if the row lacks its column.
Format rewards apply to every row by default, as they judge shape, not content.

>>> funcs, weights = build_reward_fn([{"name": "math", "weight": 1.0}, {"name": "format_instruct", "weight": 0.1}])
>>> [f.__name__ for f in funcs], weights
(['math', 'format_instruct'], [1.0, 0.1])
>>> funcs[0](["The answer is 4", "print(1)"], ground_truth=["4", None], verifier=["math", "code"])
[1.0, None]
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from reward import metrics
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
DEFAULT_ROUTES: dict[str, set[str] | None] = {
    "math": {"math"}, "ifeval": {"ifeval"}, "code": {"code"}, "judge": {"judge"},
    "format_think": None, "format_instruct": None, "format_length": None, "coin_flip": None,
}


def _take(values: Any, idx: list[int], n: int) -> Any:
    # Only per-row columns are sliced; TRL also passes scalars such as trainer_state.
    if isinstance(values, (list, tuple)) and len(values) == n:
        return [values[i] for i in idx]
    return values


def route(fn: RewardFn, routes: set[str] | None, kwargs: dict[str, Any], name: str) -> RewardFn:
    """Wrap `fn` so it only sees rows whose `verifier` is in `routes`, with spec kwargs bound."""

    def reward(completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        verifier = columns.get("verifier") or [None] * n
        idx = [i for i in range(n) if routes is None or verifier[i] is None or verifier[i] in routes]
        out: list[float | None] = [None] * n
        if not idx:
            return out
        sub = {k: _take(v, idx, n) for k, v in columns.items()}
        try:
            # Spec kwargs win over same-named dataset columns: the recipe is the authority.
            scores = fn([completions[i] for i in idx], **{**sub, **kwargs})
        except Exception:  # last resort: a reward bug must not end the training run
            metrics.incr(f"{name}/crash")
            return out
        for i, s in zip(idx, scores):
            out[i] = s
        return out

    reward.__name__ = reward.__qualname__ = name  # TRL logs rewards by __name__
    reward.__doc__ = fn.__doc__
    return reward


def build_reward_fn(specs: list[dict[str, Any]]) -> tuple[list[RewardFn], list[float]]:
    """[{"name", "weight", "alias"?, "verifier"?, **kwargs}] -> (reward_funcs, reward_weights).

    `verifier`: a value or list of `verifier` column values the reward owns ("*" or None:
    all rows). `alias`: log name, needed when one reward appears twice with different kwargs.
    """
    funcs, weights = [], []
    for spec in specs:
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
        elif routes is not None:
            routes = set(routes)
        # Fail at recipe load, not mid-training, when a reward lacks its configuration.
        required = [p.name for p in inspect.signature(REWARDS[name]).parameters.values()
                    if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
        missing = [k for k in required if k not in spec]
        if missing:
            raise ValueError(f"reward {name!r} needs {', '.join(missing)} in its spec")
        funcs.append(route(REWARDS[name], routes, spec, alias))
        weights.append(weight)
    return funcs, weights
