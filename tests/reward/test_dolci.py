"""Rows as Dolci RL carries them (allenai/Dolci-Think-RL, Dolci-Instruct-RL after the mix renames
`dataset` to `verifier`), through the routed rewards the 7B recipes build.

Formats from open-instruct's ground_truth_utils.py (IFEvalVerifier: ast.literal_eval(label)[0];
CodeVerifier: decode_tests' JSON / base64+zlib+pickle; LMJudgeVerifier: judge_utils' templates)
and its tests; each label has a passing and a failing completion, Think ones included.
"""

import base64
import json
import pickle
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reward import build_reward_fn, metrics
from reward.health import RewardHealthError, check_coverage, check_crashes, label_report, take_health_logs
from reward.registry import route


def encode_tests(tests):  # open_instruct/code_utils/code_utils.py encode_tests
    return base64.b64encode(zlib.compress(pickle.dumps(tests))).decode()


IF_GT = str([{"instruction_id": ["punctuation:no_comma", "count:lowercase_counting"], "kwargs": [None, {"N": 3}]}])
IF_GT_JSON = str([json.dumps({"instruction_id": ["first_word:first_word_answer", "last_word:last_word_answer"],
                              "kwargs": [{"first_word": "Dear"}, {"last_word": "friend"}]})])
ADD_ASSERTS = json.dumps(["assert add(1, 2) == 3", "assert add(2, 2) == 4"])
STDIO = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}]
ADD = "```python\ndef add(a, b):\n    return a + b\n```"
SUM = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
Q = [{"role": "user", "content": "What is the capital of France?"}]

# (label, ground truth, passing completion, failing completion)
ROWS = [
    ("math", r"\frac{1}{2}", "<think>Half of one.</think>\nThe answer is $\\boxed{\\frac{1}{2}}$.", r"\boxed{2}"),
    ("math", "7", "<think>3+4 is \\boxed{7} so", "<think>3+4</think> Final Answer: The final answer is 8. I hope it is correct."),
    ("math", "12", "Final Answer: The final answer is $12$. I hope it is correct.", "I think 12 is wrong; it is 13."),
    ("ifeval", IF_GT, "<think>lots of lowercase, and commas</think>HELLO WORLD ok", "Hello, world and more words here"),
    ("ifeval", IF_GT_JSON, "<think>plan</think>Dear reader, goodbye my friend.", "Hello reader, goodbye my pal!"),
    ("code", ADD_ASSERTS, f"<think>easy, ```python\nbroken(\n``` first</think>{ADD}", ADD.replace("a + b", "a * b")),
    ("code_stdio", encode_tests(STDIO), f"<think>read two ints</think>{SUM}", SUM.replace("a + b", "a - b")),
    ("code_stdio", json.dumps(STDIO), SUM, "print(3)"),
]


@pytest.fixture(scope="module")
def judge_url():
    """A fake OpenAI-compatible judge: SCORE 9 if the answer says Paris, else 2; keeps the requests."""
    seen = []

    class Judge(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            seen.append(prompt)
            answer = prompt.split("[AI Answer]\n", 1)[1].split("\n\n[", 1)[0]
            score = 9 if "Paris" in answer else 2
            reply = f'<think>the answer is {answer}</think>{{"REASONING": "checked", "SCORE": "{score}"}}'
            data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", seen
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def rewards(judge_url):
    """The 7B recipes' reward specs, the judge pointed at the fake server."""
    from posttrain.recipe import load_recipe
    specs = [dict(s) for s in load_recipe("olmo-hybrid-7b-think").stages["rl"].rewards]
    for s in specs:
        if s["name"] == "judge":
            s.update(base_url=judge_url[0], model="judge", workers=2)
    return build_reward_fn(specs)


def total(rewards, completions, labels, gts, prompts=None):
    """TRL's combination: weighted nansum of every reward's column."""
    funcs, weights = rewards
    cols = {"verifier": labels, "ground_truth": gts, "prompts": prompts or [Q] * len(completions)}
    per = [f(completions, **cols) for f in funcs]
    return [sum(w * p[i] for w, p in zip(weights, per) if p[i] is not None) if any(p[i] is not None for p in per)
            else None for i in range(len(completions))]


def test_every_label_scores_pass_1_and_fail_0(rewards):
    comps = [c for _, _, good, bad in ROWS for c in (good, bad)]
    labels = [[lab] for lab, *_ in ROWS for _ in (0, 1)]
    gts = [[gt] for _, gt, *_ in ROWS for _ in (0, 1)]
    assert total(rewards, comps, labels, gts) == [1.0, 0.0] * len(ROWS)


def test_pickled_tests_are_never_unpickled_in_the_trainer(rewards, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("unpickled in the trainer process")
    monkeypatch.setattr(pickle, "loads", refuse)
    gt = encode_tests([{"input": "2 2\n", "output": "4\n"}])
    assert total(rewards, [SUM], [["code_stdio"]], [[gt]]) == [1.0]


def test_pass_threshold_is_ais_099():
    from reward.code import code_reward
    tests = [json.dumps(["assert add(1, 2) == 3", "assert add(2, 2) == 5"])]
    assert code_reward([ADD], ground_truth=tests) == [0.5]  # open-instruct's default threshold 0
    assert code_reward([ADD], ground_truth=tests, pass_threshold=0.99) == [0.0]
    assert code_reward([ADD.replace("def", "import os\ndef")], ground_truth=[ADD_ASSERTS], refuse_unsafe=True) == [0.0]


def test_ifeval_fraction_and_empty_answer():
    from reward.ifeval import ifeval_reward
    assert ifeval_reward(["HELLO, WORLD"], ground_truth=[IF_GT]) == [0.5]
    assert ifeval_reward(["<think>only thoughts</think>"], ground_truth=[IF_GT]) == [0.0]
    empty = str([{"instruction_id": [], "kwargs": []}])  # open-instruct test: scores 0, no crash
    assert ifeval_reward(["anything"], ground_truth=[empty]) == [0.0]


@pytest.mark.parametrize("label,ref,good,bad", [
    ("general-quality", None, "<think>easy</think>Paris.", "<think>hmm</think>Lyon."),
    ("general-quality_ref", "Paris", "It is Paris.", "<answer>Rome</answer>"),
])
def test_judged_rows(rewards, judge_url, label, ref, good, bad):
    assert total(rewards, [good, bad], [[label]] * 2, [[ref]] * 2) == [pytest.approx(0.9), pytest.approx(0.2)]
    sent = judge_url[1][-1]
    assert "[Conversation History]\nuser: What is the capital of France?" in sent
    assert ("[Reference Gold Answer]\nParis" in sent) == (ref is not None)
    assert "<think>" not in sent  # the judge sees the final answer only


def test_multi_label_rows_sum_as_open_instruct(rewards):
    comps = ["HELLO WORLD \\boxed{4}", "HELLO WORLD \\boxed{5}"]
    labels = [["math", "ifeval"]] * 2
    gts = [["4", IF_GT]] * 2
    assert total(rewards, comps, labels, gts) == [2.0, pytest.approx(1.0)]
    # a label twice: each ground truth scored on its own, summed (open-instruct's per-row sum)
    assert total(rewards, ["\\boxed{4}"], [["MATH", "math"]], [["4", "5"]]) == [1.0]


def test_string_labels_and_mismatched_lists():
    funcs, _ = build_reward_fn([{"name": "math"}])
    metrics.reset()
    out = funcs[0](["\\boxed{4}", "\\boxed{4}", "\\boxed{4}"], verifier=["math", ["math", "math"], ["code"]],
                   ground_truth=[["5", "4"], ["4"], ["4"]])
    assert out == [1.0, None, None]  # any-of list under a string label; 2 labels for 1 truth; not math
    assert metrics.snapshot()["math/label_mismatch"] == 1


def test_health_counts_and_crash_guard():
    def boom(completions, **_):
        if any("bad" in c for c in completions):
            raise KeyError("bad row")
        return [1.0] * len(completions)
    fn = route(boom, None, {}, "boom")
    metrics.reset()
    assert fn(["ok", "bad", "ok"]) == [1.0, None, 1.0]  # the crashing row is found and skipped
    logs = take_health_logs()
    assert logs["health/boom/scored"] == 2 and logs["health/boom/crashed"] == 1
    assert logs["health/boom/mean"] == 1.0
    check_crashes(logs, 0.5)
    with pytest.raises(RewardHealthError, match=r"'boom' crashed on 1 of 3 rows .*KeyError: 'bad row'"):
        check_crashes(logs, 0.2)


def test_coverage_report_and_guard():
    rows = [{"verifier": ["math"]}, {"verifier": ["code_stdio"]}, {"verifier": ["general-quality"]},
            {"ground_truth": "4"}, {"prompt": "no answer"}]
    specs = [{"name": "math"}, {"name": "code"}, {"name": "format_think"}]
    report = {r["label"]: r["rewards"] for r in label_report(rows, specs)}
    assert report == {"code_stdio": ["code"], "general-quality": [], "math": ["math"], "(none)": ["math", "code"]}
    with pytest.raises(RewardHealthError, match=r"general-quality \(1 rows\)"):
        check_coverage(label_report(rows, specs), "rl")
    check_coverage(label_report(rows[:2], specs), "rl")
    only_format = label_report([{"verifier": "math"}], [{"name": "format_think"}])
    with pytest.raises(RewardHealthError):
        check_coverage(only_format, "rl")


def test_every_row_rewards_score_a_multi_label_row_once():
    funcs, _ = build_reward_fn([{"name": "format_instruct"}, {"name": "math", "verifier": "*"}])
    cols = {"verifier": [["math", "ifeval"]], "ground_truth": [["4", IF_GT]]}
    # once each: format 1.0 (not 2.0); "*" math sees the whole list, as any-of golds
    assert [f(["\\boxed{4}"], **cols) for f in funcs] == [[1.0], [1.0]]
