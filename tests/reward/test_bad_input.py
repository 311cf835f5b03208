"""Malformed completions never crash a reward, and are counted."""

import pytest

from reward import metrics
from reward.code import code_reward
from reward.format import format_instruct, format_think
from reward.ifeval import ifeval_reward
from reward.judge import Judge, JudgeConfig
from reward.math import math_reward

BAD = [None, "", 42, 3.5, {"role": "assistant"}, [{"role": "assistant", "content": None}], b"bytes", ["x", 1]]
GIANT = "lorem ipsum " * 200_000 + "The answer is 7"
BROKEN_LATEX = [r"\boxed{\frac{1}{", r"\boxed{\sqrt[}{}}}", r"The answer is \frac{\frac{", r"\boxed{}", r"\boxed{\left(}",
                r"\boxed{10^{10^{10^{10}}}}", r"\boxed{" + "(" * 500 + "}"]


def test_math_bad_completions():
    out = math_reward(BAD, ground_truth=["1"] * len(BAD))
    assert all(s == 0.0 for s in out)
    assert metrics.snapshot()["math/bad_completion"] >= 5


def test_math_broken_latex_and_giant_text():
    out = math_reward(BROKEN_LATEX + [GIANT], ground_truth=["1"] * len(BROKEN_LATEX) + ["7"], timeout_s=1)
    assert out[:-1] == [0.0] * len(BROKEN_LATEX) and out[-1] == 1.0
    snap = metrics.snapshot()
    assert snap["math/timeout"] >= 1  # the power tower / paren bomb hit the sympy timeout
    assert snap["math/no_answer"] == 2  # unbalanced \boxed{ and empty \boxed{}


def test_math_bad_gold():
    assert math_reward(["The answer is 1"] * 3, ground_truth=[r"\frac{", "", {"weird": 1}]) == [0.0, None, 0.0]


def test_ifeval_bad_completions_and_constraints():
    n = len(BAD)
    out = ifeval_reward(BAD + [GIANT], instruction_id_list=[["punctuation:no_comma"]] * (n + 1), kwargs=[[{}]] * (n + 1))
    assert all(s in (0.0, 1.0) for s in out)
    assert ifeval_reward(["x", "x"], constraints=["{not json", 17]) == [None, None]
    assert metrics.snapshot()["ifeval/bad_constraints"] == 2


def test_code_bad_completions():
    out = code_reward(BAD, tests=[["assert True"]] * len(BAD))
    assert all(s in (0.0, 1.0) for s in out)  # "x" is valid code: ["x", 1] may fail at NameError, never crash
    assert metrics.snapshot()["code/no_code"] >= 5


@pytest.mark.parametrize("fn", [format_think, format_instruct])
def test_format_bad_completions(fn):
    assert all(s == 0.0 for s in fn(BAD))


def test_judge_bad_completions_do_not_call_out():
    judge = Judge(JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", retries=0, timeout_s=0.5))
    assert judge([None, 42]) == [0.0, 0.0]
    assert metrics.snapshot() == {"judge/bad_completion": 2}
