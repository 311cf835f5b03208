import pytest

from reward import metrics
from reward.math import extract_answer, last_boxed, math_reward

EQUIVALENT = [
    (r"\boxed{0.5}", "1/2"),
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{3/6}", r"\frac{1}{2}"),
    (r"\boxed{\dfrac12}", "0.5"),
    (r"\boxed{(1, 2]}", "(1,2]"),
    (r"\boxed{[0, \infty)}", r"[0,\infty)"),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}"),
    (r"\boxed{5 \text{ cm}}", "5"),
    ("The answer is 5 cm.", "5"),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
    (r"\boxed{x^2 + 2x + 1}", "(x+1)^2"),
    ("<think>maybe 3? no</think>The answer is $\\frac{3}{4}$.", "0.75"),
    ("#### 1,234", "1234"),
    ("The answer is 42", "#### 42"),  # GSM8K solution as gold
    ("So the answer is: 7", ["6", "7"]),  # any of several golds
    ("<think>x</think>\\boxed{-3}", -3),  # non-string gold
]

NOT_EQUIVALENT = [
    (r"\boxed{0.51}", "1/2"),
    (r"\boxed{[1, 2]}", "(1,2]"),  # closed vs half-open interval
    (r"\boxed{\{1, 3\}}", r"\{1,2\}"),
    ("The answer is 41", "42"),
    ("I don't know", "42"),  # no answer at all
    ("<think>the answer is 42</think>I give up", "42"),  # answer only inside the thinking
    ("<think>the answer is 42", "42"),  # never closed the thinking: no answer
    ("the answer is 4 and \\boxed{5}", "4"),  # boxed wins over prose
]


@pytest.mark.parametrize("completion,gold", EQUIVALENT)
def test_equivalent(completion, gold):
    assert math_reward([completion], ground_truth=[gold]) == [1.0]


@pytest.mark.parametrize("completion,gold", NOT_EQUIVALENT)
def test_not_equivalent(completion, gold):
    assert math_reward([completion], ground_truth=[gold]) == [0.0]


def test_strict_needs_explicit_answer_lenient_takes_last_number():
    comps = ["first 3 then 12", "so it is 3/6."]
    assert math_reward(comps, ground_truth=["12", "0.5"], mode="strict") == [0.0, 0.0]
    assert math_reward(comps, ground_truth=["12", "0.5"], mode="lenient") == [1.0, 1.0]


def test_chat_format_and_missing_gold():
    chat = [[{"role": "assistant", "content": "The answer is 9"}]] * 2
    assert math_reward(chat, ground_truth=["9", None]) == [1.0, None]
    assert math_reward(chat) == [None, None]


def test_no_answer_is_counted():
    math_reward(["nothing here", "nor here"], ground_truth=["1", "2"])
    assert metrics.snapshot()["math/no_answer"] == 2


@pytest.mark.parametrize("text,want", [
    (r"\boxed{\frac{a}{b}}", r"\frac{a}{b}"),
    (r"\boxed{1} and \fbox{2}", "2"),
    (r"\boxed{unclosed", None),
    ("none", None),
])
def test_last_boxed(text, want):
    assert last_boxed(text) == want


def test_extract_answer_modes():
    assert extract_answer("The final answer is: $x=3$.") == "x=3"
    assert extract_answer("value 1,000") is None
    assert extract_answer("value 1,000", mode="lenient") == "1,000"
