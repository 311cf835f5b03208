"""coin_flip: the throughput-only reward that gives a random model's rollout groups variance."""

import random
import string

import pytest

from reward.coin import coin_flip
from reward.registry import build_reward_fn


@pytest.mark.parametrize("completion, expected", [
    ("1", 1.0), ("2", 0.0), ("3", 0.0), ("4", 1.0),
    ([{"role": "assistant", "content": "1"}], 1.0),  # chat completions score their text
    (7, None), (None, None),                        # unreadable: no score, not 0
])
def test_table(completion, expected):
    assert coin_flip([completion]) == [expected]


def test_fair_and_the_same_on_every_call():
    rng = random.Random(0)
    texts = ["".join(rng.choice(string.ascii_letters) for _ in range(20)) for _ in range(4000)]
    scores = coin_flip(texts)
    assert 0.46 < sum(scores) / len(scores) < 0.54
    assert coin_flip(texts) == scores


def test_groups_of_eight_almost_always_carry_signal():
    rng = random.Random(1)
    groups = [coin_flip(["".join(rng.choice(string.ascii_letters) for _ in range(30)) for _ in range(8)])
              for _ in range(2000)]
    flat = sum(len(set(g)) == 1 for g in groups) / len(groups)
    assert flat < 0.02  # 2/256 expected


def test_registered_for_every_row():
    funcs, _ = build_reward_fn([{"name": "coin_flip"}])
    assert funcs[0](["1", "2"], verifier=["math", "code"]) == [1.0, 0.0]
