"""The judge against a real OpenAI-compatible server (posttrain.serve) on loopback."""

import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reward import metrics
from reward.judge import Judge, JudgeConfig, judge_reward, parse_score, render

RUBRIC = "Rate this reply.\n{completion}\nScore:"


@pytest.mark.parametrize("text,want", [
    ("Score: 7", 0.7),
    ("score:7", 0.7),
    ("**Score:** 8.5", 0.85),
    ("Reasoning... Score: 3\nOn reflection, Score: 6", 0.6),  # the last one counts
    ("Rating: 4/5", 0.8),
    ("Score: 9 out of 10", 0.9),
    ("Score = 10", 1.0),
    ("7", 0.7),
    (" 7/10 ", 0.7),
    ("0", 0.0),
    ("Score: 11", None),        # out of range: unparseable, not clipped
    ("Score: -2", None),
    ("The answer 42 is wrong.", None),  # numbers in prose are not scores
    ("", None),
    ("'rZ<^*hmt<z", None),     # what an untrained model says
    (None, None),
])
def test_parse_score_table(text, want):
    got = parse_score(text)
    assert got == (pytest.approx(want) if want is not None else None)


def test_parse_score_other_scale():
    assert parse_score("Score: 3", max_score=5) == pytest.approx(0.6)


def test_render_keeps_braces_in_completion():
    out = render("Q: {prompt}\nA: {completion}\n{max_score}", "q", "def f(): return {1: 2}", None, 10)
    assert out == "Q: q\nA: def f(): return {1: 2}\n10"


@pytest.fixture(scope="module")
def live():
    from posttrain.serve import serve
    try:
        from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
    except ImportError:  # the lead's tiny model not available: a throwaway one of our own
        from _tiny_fallback import build_tiny_model, build_tiny_tokenizer
    tok = build_tiny_tokenizer()
    server, _ = serve(build_tiny_model(tok, seed=0), tok, host="127.0.0.1", port=0, model_name="tiny")
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield base, tok, server
    server.shutdown()
    server.server_close()


def _post(base, body):
    req = urllib.request.Request(base + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def test_server_speaks_openai(live):
    base, _, _ = live
    models = json.loads(urllib.request.urlopen(base + "/models", timeout=10).read())
    assert models["data"][0]["id"] == "tiny"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    a, b = _post(base, body), _post(base, body)
    assert a["choices"][0]["message"]["role"] == "assistant"
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]  # greedy: deterministic
    assert a["usage"]["completion_tokens"] <= 4
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(base, {"model": "tiny", "messages": []})
    assert err.value.code == 400


def test_judge_scores_via_forced_token_and_caches(live):
    base, tok, server = live
    seven = tok.convert_tokens_to_ids("7")
    cfg = dict(base_url=base, model="tiny", rubric=RUBRIC, max_tokens=1, workers=2,
               extra_body={"logit_bias": {str(seven): 100.0}})
    comps = ["first answer", [{"role": "assistant", "content": "second answer"}], "<think>x</think>third"]
    before = server.stats["requests"]
    assert judge_reward(comps, prompts=["p"] * 3, **cfg) == [pytest.approx(0.7)] * 3
    assert server.stats["requests"] - before == 3
    assert judge_reward(comps, prompts=["p"] * 3, **cfg) == [pytest.approx(0.7)] * 3
    assert server.stats["requests"] - before == 3  # all served from the cache
    assert metrics.snapshot()["judge/cache_hit"] == 3


def test_untrained_judge_gibberish_matches_parse_path(live):
    base, _, _ = live
    judge = Judge(JudgeConfig(base_url=base, model="tiny", rubric=RUBRIC, max_tokens=4))
    comps = ["alpha"]
    scores = judge(comps)
    for comp, score in zip(comps, scores):
        raw = _post(base, judge._body(render(RUBRIC, "", comp, None, 10)))["choices"][0]["message"]["content"]
        assert score == parse_score(raw)
    assert metrics.snapshot().get("judge/parse_fail", 0) == scores.count(None)
    judge.close()


def test_disk_cache_survives_a_new_judge(live, tmp_path):
    base, tok, server = live
    cache = tmp_path / "judge.jsonl"
    cfg = JudgeConfig(base_url=base, model="tiny", rubric=RUBRIC, max_tokens=1, cache_path=str(cache),
                      extra_body={"logit_bias": {str(tok.convert_tokens_to_ids("3")): 100.0}})
    assert Judge(cfg)(["disk"]) == [pytest.approx(0.3)]
    before = server.stats["requests"]
    assert Judge(cfg)(["disk"]) == [pytest.approx(0.3)]
    assert server.stats["requests"] == before
    assert len(cache.read_text().splitlines()) == 1


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_judge_is_counted_not_raised():
    cfg = JudgeConfig(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m", retries=2, backoff_s=0.01, timeout_s=1)
    assert Judge(cfg)(["a", "b"]) == [None, None]
    snap = metrics.snapshot()
    assert snap["judge/request_fail"] == 2 and snap["judge/retry"] == 4


def test_hung_server_times_out():
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()  # accepts TCP but never answers
    cfg = JudgeConfig(base_url=f"http://127.0.0.1:{hung.getsockname()[1]}/v1", model="m",
                      retries=0, timeout_s=0.3, fail_score=0.0)
    t = time.monotonic()
    assert Judge(cfg)(["a"]) == [0.0]
    assert time.monotonic() - t < 3
    hung.close()


def test_retries_through_server_errors():
    calls = {"n": 0}

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            calls["n"] += 1
            code, body = (503, {}) if calls["n"] < 3 else (200, {"choices": [{"message": {"content": "Score: 9"}}]})
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = JudgeConfig(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", model="m", retries=3, backoff_s=0.01)
    assert Judge(cfg)(["x"]) == [pytest.approx(0.9)]
    assert calls["n"] == 3 and metrics.snapshot()["judge/retry"] == 2
    srv.shutdown()
    srv.server_close()
