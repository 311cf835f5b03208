import pytest

from reward.format import format_instruct, format_think, length_reward

THINK_CASES = [
    ("<think>reason</think>answer", 1.0),
    ("  <think>\nreason\n</think>\n\nanswer", 1.0),
    ("answer only", 0.0),
    ("<think>reason</think>", 0.0),              # no answer
    ("<think>reason</think>   \n", 0.0),         # blank answer
    ("<think>reason", 0.0),                      # never closed
    ("pre <think>r</think>answer", 0.0),         # text before the think block
    ("<think>a</think>b<think>c</think>d", 0.0),  # two blocks
    ("<think>a</think></think>b", 0.0),
]


@pytest.mark.parametrize("text,want", THINK_CASES)
def test_think_format(text, want):
    assert format_think([text]) == [want]


def test_think_opened_by_prompt():
    assert format_think(["reason</think>answer", "<think>x</think>y"], think_in_prompt=True) == [1.0, 0.0]


@pytest.mark.parametrize("text,want", [
    ("plain answer", 1.0), ("", 0.0), ("<think>x</think>ans", 0.0), ("ans </think>", 0.0),
])
def test_instruct_format(text, want):
    assert format_instruct([text]) == [want]


def test_length_limits():
    assert format_think(["<think>a</think>" + "word " * 10], max_words=5) == [0.0]
    assert format_think(["<think>a</think>ok"], max_chars=100) == [1.0]
    assert length_reward(["x" * 10, "x" * 11, ""], max_chars=10) == [1.0, 0.0, 0.0]


def test_chat_format():
    assert format_instruct([[{"role": "assistant", "content": "hi"}]]) == [1.0]
