"""Failure counters shared by all rewards.

Rewards never raise on bad input (a crash would kill a GRPO step); they score 0 or None
instead. Silently swallowing errors hides broken data or a broken verifier, so every
swallowed case bumps a counter here that the trainer can log next to the rewards.

>>> reset()
>>> incr("math/parse_fail"); incr("math/parse_fail")
>>> snapshot()
{'math/parse_fail': 2}
"""

from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def incr(key: str, n: float = 1) -> None:
    # Rewards run from worker threads (code sandbox pool, judge pool): guard the Counter.
    with _lock:
        _counts[key] += n


def snapshot(reset_after: bool = False) -> dict[str, float]:
    """Counts since the last reset, e.g. {"math/parse_fail": 3}."""
    with _lock:
        out = dict(sorted(_counts.items()))
        if reset_after:
            _counts.clear()
    return out


def reset() -> None:
    with _lock:
        _counts.clear()
