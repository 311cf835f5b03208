"""Suite scoring through lm-eval with scripted completions: the judge path against a stub
OpenAI-compatible server on a real socket, and the Think suite's think stripping, avg@k and
standard errors on known right and wrong completions. No model loads: an lm-eval `LM` serves
the completions, so every number below is exact.
"""

import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from posttrain import harness, suites
from posttrain.data.templates import TEMPLATES
from tests.test_suites import SHARDS, small_suite, write_shards

pytest.importorskip("lm_eval")
from lm_eval.api.model import LM  # noqa: E402


class ScriptedLM(LM):
    """Answers each prompt from a script (a substring of the question -> completions, served in turn)."""

    def __init__(self, script: dict[str, list[str]]):
        super().__init__()
        self.script, self.calls = script, Counter()

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for r in requests:
            key = next(k for k in self.script if k in r.args[0])
            out.append(self.script[key][self.calls[key] % len(self.script[key])])
            self.calls[key] += 1
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return "".join(f"<|{m['role']}|>{m['content']}" for m in chat_history) + "<|assistant|>"

    @property
    def tokenizer_name(self) -> str:
        return "scripted"


def suite_with(tmp_path, name: str, tasks: list[str], **over):
    p = small_suite(tmp_path, name, **over)
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(p)
    cfg.tasks = {k: v for k, v in cfg.tasks.items() if k in tasks}
    OmegaConf.save(cfg, p)
    return suites.load_suite(str(p))


# ---- Think: think stripping, avg@k, standard error ------------------------------------------------
def test_think_aime_avg_at_k_and_stderr_on_known_completions(tmp_path):
    """A Think template opens <think> in the prompt, so completions start inside the reasoning.
    Question 1: seed 0 right, right; seed 1 unclosed (no answer), and right with a wrong answer in
    the reasoning -> avg@4 0.75. Question 2: the right answer only inside the reasoning -> 0."""
    data = write_shards(tmp_path / "data")
    second = {**SHARDS["aime24"][0], "id": 61, "answer": "70",
              "problem": "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$."}
    (data / "aime24.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [SHARDS["aime24"][0], second]))
    suite = suite_with(tmp_path, "think", ["aime24"])  # seeds [0, 1] x 2 samples
    lm = ScriptedLM({
        "Aya": ["3 h 24 min</think>The answer is \\boxed{204}.", "</think>\\boxed{204}",
                "still thinking... \\boxed{204}", "\\boxed{100}? no.</think>\\boxed{204}"],
        "bases": ["b + 7 divides 56, so \\boxed{70}</think>\\boxed{7}"],
    })
    res = harness.evaluate_suite(harness.Target("think", None, TEMPLATES["olmo3-think"], "k"), suite,
                                 data_dir=data, lm=lm)
    t = res["tasks"]["aime24"]
    # Question means 0.75 and 0: score 0.375, SE = std(0.75, 0) / sqrt(2) = 0.375; per seed
    # (question means averaged): seed 0 (1 + 0) / 2, seed 1 (0.5 + 0) / 2.
    assert (t["score"], t["stderr"], t["n"], t["completions"], t["samples"]) == (0.375, 0.375, 2, 8, 2)
    assert t["seed_scores"] == [0.5, 0.25] and t["answered"] == 0.875 and "warning" not in t
    assert all(e["completion"].startswith("<think>") for e in t["examples"])


def test_think_stripping_scores_the_answer_not_the_reasoning():
    """Every Think-suite scorer reads only what follows </think>."""
    cases = [  # (task, completion, expected)
        ("math500", "<think>\\boxed{42}</think>\\boxed{41}", 0.0),
        ("math500", "<think>\\boxed{41}</think>So \\boxed{42}", 1.0),
        ("gpqa_diamond", "<think>Answer: {right}</think>Answer: {wrong}", 0.0),
        ("gpqa_diamond", "<think>Answer: {wrong}</think>Answer: {right}", 1.0),
        ("ifeval", "<think>commas, commas, commas</think>{text}", 1.0),
        ("mbppplus", "<think>```python\ndef similar_elements(a, b):\n  return tuple(set(a) & set(b))\n```</think>"
                     "I cannot answer.", 0.0),
    ]
    think = suites.load_suite("think")
    for task, comp, want in cases:
        spec = think.tasks[task]
        row = SHARDS[task][1 if task == "math500" else 0]
        ref = json.loads(suites.build_docs(task, spec, [row], "x")[0]["ref"])
        if task == "gpqa_diamond":
            comp = comp.format(right=ref["answer"], wrong="ABCD".replace(ref["answer"], "")[0])
        if task == "ifeval":
            ref = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
            comp = comp.format(text="No commas in the answer")
        assert suites.SCORERS[spec.scorer]([comp], ref) == [want], (task, comp)


# ---- judge endpoint ---------------------------------------------------------------------------------
class StubJudge(ThreadingHTTPServer):
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1: records requests, replies by script."""

    def __init__(self, reply):
        self.requests: list[tuple[str, dict]] = []
        self.reply = reply  # (path, body) -> (status, JSON body or raw bytes)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(h):
                body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
                self.requests.append((h.path, body))
                status, out = self.reply(h.path, body)
                data = out if isinstance(out, bytes) else json.dumps(out).encode()
                h.send_response(status)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data)

            def log_message(h, *a):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def __exit__(self, *a):
        self.shutdown()
        super().__exit__(*a)


def chat(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


MT_LM = {"Hawaii": ["Aloha from Oahu: hula, poke and the Pearl Harbor memorial."],
         "triangle": ["The area of the triangle is 3."]}


def by_answer(path, body):
    text = body["messages"][0]["content"]
    if path != "/v1/chat/completions":
        return 404, {"error": {"message": "Not Found"}}
    if "Aloha" in text:
        return 200, chat("Vivid and on topic. Score: 9")
    if "area of the triangle is 3" in text:
        return 200, chat("Correct but terse.\nScore: 3")
    return 200, chat("OK")


def test_judged_chat_task_end_to_end_through_a_stub_endpoint(tmp_path):
    data = write_shards(tmp_path / "data")
    suite = suite_with(tmp_path, "instruct", ["mt_bench", "gsm8k"])
    target = harness.Target("instruct", None, TEMPLATES["olmo3-instruct"], "k")
    lm = ScriptedLM({**MT_LM, "Janet": ["\\boxed{18}"]})
    with StubJudge(by_answer) as server:
        res = harness.evaluate_suite(target, suite, data_dir=data, lm=lm,
                                     judge={"base_url": server.url, "model": "judge-x"})
    mt = res["tasks"]["mt_bench"]
    # Per question: 9/10 and 3/10 over seeds x samples; SE = std of the two means / sqrt(2).
    assert (round(mt["score"], 6), round(mt["stderr"], 6), mt["n"], mt["completions"]) == (0.6, 0.3, 2, 4)
    assert res["tasks"]["gsm8k"]["score"] == 1.0  # the unjudged task beside it is untouched
    probe, *judged = server.requests
    assert probe[1]["max_tokens"] == 1  # the endpoint check before any generation
    assert len(judged) == 2  # identical requests of the second seed come from the judge's cache
    for path, body in judged:
        assert path == "/v1/chat/completions" and body["model"] == "judge-x" and body["temperature"] == 0.0
        (msg,) = body["messages"]
        assert msg["role"] == "user"
    texts = sorted(b["messages"][0]["content"] for _, b in judged)
    assert "travel blog post about a recent trip to Hawaii" in texts[0] and "Aloha from Oahu" in texts[0]
    assert "What is the area of the triangle?" in texts[1] and "area of the triangle is 3." in texts[1]
    assert "Area is 3" in texts[1]  # MT-Bench's reference answer for the math question


def test_judged_task_is_skipped_without_a_judge(tmp_path):
    data = write_shards(tmp_path / "data")
    suite = suite_with(tmp_path, "instruct", ["mt_bench", "gsm8k"])
    res = harness.evaluate_suite(harness.Target("i", None, TEMPLATES["olmo3-instruct"], "k"), suite, data_dir=data,
                                 lm=ScriptedLM({"Janet": ["\\boxed{18}"]}))
    assert set(res["tasks"]) == {"gsm8k"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["unreachable", "malformed", "not_found", "not_url", "no_model", "unknown_field"])
def test_unusable_judge_is_one_line_error_before_generation(case, tmp_path):
    suite = suite_with(tmp_path, "instruct", ["mt_bench"])
    lm = ScriptedLM(MT_LM)
    reply = {"malformed": lambda p, b: (200, {"error": "overloaded"}),
             "not_found": lambda p, b: (404, {"error": {"message": "The model `judge-x` does not exist."}})}
    with StubJudge(reply.get(case, by_answer)) as server:
        judge = {"unreachable": {"base_url": f"http://127.0.0.1:{_free_port()}/v1", "model": "judge-x"},
                 "not_url": {"base_url": "127.0.0.1:8000/v1", "model": "judge-x"},
                 "no_model": {"base_url": server.url},
                 "unknown_field": {"base_url": server.url, "model": "judge-x", "temprature": 0}
                 }.get(case, {"base_url": server.url, "model": "judge-x"})
        want = {"unreachable": r"judge.base_url http://127.0.0.1:\d+/v1: unreachable \(.*refused",
                "malformed": r"judge.base_url http://\S+: not an OpenAI-compatible /chat/completions reply",
                "not_found": r"judge.base_url http://\S+: refused a 1-token request for judge.model 'judge-x': "
                             r"HTTP 404: .*does not exist",
                "not_url": r"judge.base_url \(--judge-url\) '127.0.0.1:8000/v1' is not an http\(s\) URL",
                "no_model": r"judge.model \(--judge-model\) is needed",
                "unknown_field": r"judge.temprature: unknown field"}[case]
        with pytest.raises(suites.SuiteError, match=want) as err:
            harness.evaluate_suite(harness.Target("i", None, TEMPLATES["olmo3-instruct"], "k"), suite,
                                   data_dir=write_shards(tmp_path / "data"), judge=judge, lm=lm)
    assert "\n" not in str(err.value) and str(err.value).startswith(suite.source)
    assert sum(lm.calls.values()) == 0  # refused before any generation


def test_judge_outage_during_the_run_stops_it_instead_of_scoring_zero(tmp_path):
    suite = suite_with(tmp_path, "instruct", ["mt_bench"])
    down = lambda p, b: (200, chat("OK")) if b["max_tokens"] == 1 else (503, {"error": "down"})  # noqa: E731
    with StubJudge(down) as server:
        with pytest.raises(suites.SuiteError, match=r"judge.base_url http://\S+: 1 of 1 judge requests failed"):
            harness.evaluate_suite(harness.Target("i", None, TEMPLATES["olmo3-instruct"], "k"), suite,
                                   data_dir=write_shards(tmp_path / "data"), lm=ScriptedLM(MT_LM),
                                   judge={"base_url": server.url, "model": "judge-x", "retries": 0})
