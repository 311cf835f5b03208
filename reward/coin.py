"""A reward for throughput runs only: a coin flip decided by the completion's text.

A random-weight model (benchmarks/recipes/olmo-hybrid-7b-throughput.yaml) solves nothing, so
every real reward is 0, every group's advantage is 0 and each GRPO update is zero: the run
would time a trainer whose weights never move and a weight sync that changes nothing. With
half the completions earning 1, a group of 8 has reward variance with probability 1 - 2/2^8,
so the steps train and the syncs carry new weights. The coin is a hash of the text, so it is
the same on every process and in every run (Python's own hash() is salted per process).
It rewards nothing: never use it to train a model you mean to keep.

>>> coin_flip(["1", "2", "3", "4", [{"role": "assistant", "content": "1"}], 7])
[1.0, 0.0, 0.0, 1.0, 1.0, None]
"""

from __future__ import annotations

import hashlib
from typing import Any

from reward._text import completion_text


def coin_flip(completions: list[Any], **_: Any) -> list[float | None]:
    out: list[float | None] = []
    for c in completions:
        text = completion_text(c)
        out.append(None if text is None else float(hashlib.sha256(text.encode()).digest()[0] & 1))
    return out
