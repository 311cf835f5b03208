import json

import pytest

from reward import metrics
from reward.code import code_reward, extract_code, normalize_tests, same_output

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]
ECHO_SUM = "a, b = map(int, input().split())\nprint(a + b)"


@pytest.mark.parametrize("text,want", [
    (f"Here:\n```python\n{ADD}```\nDone.", ADD),
    (f"```python\nx = 1\n```\nbetter:\n```py\n{ADD}```", ADD),
    (f"```\n{ADD}```", ADD),
    ("```bash\nls\n```\n" + ADD, "ls\n"),  # the last block, as open-instruct runs it (and fails)
    (ADD, ADD),
])
def test_extract_code(text, want):
    assert extract_code(text) == want


def test_partial_and_all_or_nothing():
    comp = [f"<think>easy</think>```python\n{ADD}```"]
    assert code_reward(comp, tests=[ADD_TESTS]) == [pytest.approx(2 / 3)]
    assert code_reward(comp, tests=[ADD_TESTS], mode="all") == [0.0]
    assert code_reward(comp, tests=[ADD_TESTS[:2]], mode="all") == [1.0]


@pytest.mark.parametrize("tests", [
    [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "10"}, {"input": "0 0", "output": "1"}],
    {"inputs": ["1 2", "5 5", "0 0"], "outputs": ["3", "10", "1"]},
    json.dumps({"inputs": ["1 2", "5 5", "0 0"], "outputs": ["3", "10", "1"]}),
])
def test_stdio_formats(tests):
    assert code_reward([ECHO_SUM], tests=[tests]) == [pytest.approx(2 / 3)]


def test_stdio_handles_buffer_reads_and_exit():
    prog = "import sys\ndata = sys.stdin.buffer.read().split()\nprint(sum(map(int, data)))\nsys.exit(0)"
    assert code_reward([prog], tests=[[{"input": "1 2 3", "output": "6"}]]) == [1.0]


def test_syntax_error_and_wrong_answer_score_zero():
    assert code_reward(["def add(a, b) return", "def add(a, b):\n    return a - b"],
                       tests=[ADD_TESTS[:1], ADD_TESTS[:1]]) == [0.0, 0.0]


def test_rows_without_tests_do_not_apply_and_bad_tests_are_counted():
    assert code_reward([ADD, ADD, ADD], tests=[None, [], [1, 2]]) == [None, None, None]
    assert metrics.snapshot()["code/bad_tests"] == 1


def test_chat_format_completion():
    assert code_reward([[{"role": "assistant", "content": ADD}]], tests=[ADD_TESTS[:1]]) == [1.0]


@pytest.mark.parametrize("got,want,ok", [
    ("3\n", "3", True), ("3  \n\n", "3\n", True), ("1\n2", "1\n2\n", True), ("  3", "3", True),
    ("0.50", "0.5", True), ("1 2 3", "1 2  3", True), ("1\n\n2", "1\n2", False),
    ("1 2", "1\n2", False), ("4", "3", False), (None, "3", False),
])
def test_same_output(got, want, ok):
    assert same_output(got, want) is ok


def test_normalize_tests_bare_assert_block():
    assert normalize_tests("assert f() == 1") == {"mode": "asserts", "tests": ["assert f() == 1"]}


def test_site_packages_only_on_request():
    comp = ["import pytest"]  # any venv-only package
    assert code_reward(comp, tests=[["assert True"]]) == [0.0]
    assert code_reward(comp, tests=[["assert True"]], site_packages=True) == [1.0]


def test_reward_modules_do_not_shadow_stdlib_in_the_sandbox():
    # reward/math.py and reward/code.py sit next to the harness; -I must keep them off sys.path.
    code = "import math, code\nroot = math.sqrt(4)"
    assert code_reward([code], tests=[["assert root == 2.0", "assert hasattr(code, 'interact')"]]) == [1.0]


def test_stdio_output_counts_whatever_the_exit_status():
    # open-instruct's testing_util.call_method swallows SystemExit and grades what was printed
    assert code_reward(["print(int(input()) * 2)\nraise SystemExit(3)"], tests=[[{"input": "2", "output": "4"}]]) == [1.0]
