"""The async RL client of `vllm serve` (posttrain/rollout/engines.VLLMServerEngine) against a stub
HTTP server on a real socket that answers as vLLM 0.26's routes do (shapes from
vllm/entrypoints/serve/dev/server_info/api_router.py, serve/dev/rlhf/api_router.py and
openai/completion/protocol.py of the 0.26.0 wheel): what each request carries, how the response
is read, the pause/resume around a weight push, and the one-line refusals of a misconfigured server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("requests")

from posttrain.rollout.engines import VLLMServerEngine  # noqa: E402
from posttrain.rollout.producer import RolloutJob  # noqa: E402


class Stub:
    def __init__(self, info=None, dev_mode=True):
        self.info = info or {"weight_transfer_config": {"backend": "nccl"},
                             "model_config": {"logprobs_mode": "processed_logprobs"}}
        self.dev_mode, self.log, self.bodies = dev_mode, [], []
        stub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                u = urlparse(self.path)
                if u.path == "/server_info" and stub.dev_mode:
                    assert parse_qs(u.query) == {"config_format": ["json"]}
                    return self._send(200, {"vllm_config": stub.info, "vllm_env": {}, "system_env": {}})
                if u.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": "/ckpt/init", "object": "model"}]})
                self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                u = urlparse(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                stub.log.append(u.path + ("?" + u.query if u.query else ""))
                if u.path == "/v1/completions":
                    stub.bodies.append(body)
                    k = min(body["max_tokens"], 4)
                    ids = [(body["seed"] + i) % 50 + 10 for i in range(k)]  # a function of the seed
                    return self._send(200, {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                                            "choices": [{"index": 0, "text": "x" * k, "token_ids": ids,
                                                         "finish_reason": "length", "logprobs": {
                                                             "text_offset": list(range(k)), "tokens": ["x"] * k,
                                                             "token_logprobs": [-0.5 - i for i in range(k)],
                                                             "top_logprobs": [None] * k}}]})
                self._send(200, {"message": "ok"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


class FakeTRLGeneration:
    """Stands in for TRL's VLLMGeneration: the nccl push is its sync_weights."""
    pushes = 0

    def sync_weights(self):
        type(self).pushes += 1


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


def test_requests_carry_the_job_and_responses_become_a_group(stub):
    eng = VLLMServerEngine(stub.url, temperature=0.7, max_tokens=3, trl_generation=FakeTRLGeneration(),
                           stop_token_ids=[100265, 100257])
    try:
        jobs = [RolloutJob(idx=4, prompt_ids=[1, 2, 3], n=2, version=0, seed=1000, max_tokens=[2, 9]),
                RolloutJob(idx=7, prompt_ids=[5], n=3, version=0, seed=2000)]
        groups = [f.result(timeout=30) for f in eng.submit(jobs)]
    finally:
        eng.close()
    by_seed = {b["seed"]: b for b in stub.bodies}
    assert sorted(by_seed) == [1000, 1001, 2000, 2001, 2002]  # one request per completion, seed + c
    b = by_seed[1001]
    assert (b["prompt"], b["n"], b["max_tokens"], b["temperature"], b["top_p"]) == ([1, 2, 3], 1, 9, 0.7, 1.0)
    assert b["logprobs"] == 0 and b["return_token_ids"] and not b["skip_special_tokens"]
    assert b["stop_token_ids"] == [100265, 100257] and b["model"] == "/ckpt/init" and not b["ignore_eos"]
    assert by_seed[1000]["max_tokens"] == 2 and by_seed[2002]["max_tokens"] == 3  # per completion, else the stage's
    g = groups[0]
    assert g.idx == 4 and g.prompt_ids == [1, 2, 3] and len(g.completion_ids) == 2
    assert g.completion_ids[0] == [10, 11] and g.logprobs[0] == [-0.5, -1.5]  # completion 0 is seed 1000's
    assert [len(c) for c in groups[1].completion_ids] == [3, 3, 3]


def test_weight_push_pauses_in_place_and_resumes(stub):
    FakeTRLGeneration.pushes = 0
    eng = VLLMServerEngine(stub.url, temperature=1.0, max_tokens=2, trl_generation=FakeTRLGeneration())
    try:
        eng.sync_weights(None, 0)  # pushed too: the server may hold another run's (or a killed run's) weights
        assert stub.log == ["/pause?mode=keep", "/resume"] and eng.version == 0 and FakeTRLGeneration.pushes == 1
        eng.sync_weights(None, 1)
        assert stub.log == ["/pause?mode=keep", "/resume"] * 2 and FakeTRLGeneration.pushes == 2
        g = eng.submit([RolloutJob(idx=0, prompt_ids=[1], n=1, version=1, seed=5)])[0].result(timeout=30)
        assert (g.version, g.version_end) == (1, 1)
    finally:
        eng.close()


@pytest.mark.parametrize("info, dev_mode, msg", [
    (None, False, "VLLM_SERVER_DEV_MODE=1"),
    ({"weight_transfer_config": None, "model_config": {"logprobs_mode": "processed_logprobs"}}, True,
     "weight transfer backend None"),
    ({"weight_transfer_config": {"backend": "nccl"}, "model_config": {"logprobs_mode": "raw_logprobs"}}, True,
     "processed_logprobs"),
])
def test_a_misconfigured_server_is_refused_in_one_line(info, dev_mode, msg):
    from posttrain.rollout.async_stage import server_backend
    s = Stub(info, dev_mode)
    try:
        with pytest.raises(RuntimeError, match=msg) as e:
            VLLMServerEngine(s.url, temperature=1.0, max_tokens=2, trl_generation=FakeTRLGeneration())
        assert "\n" not in str(e.value) and s.url in str(e.value)
        if not dev_mode:  # the stage asks for the backend first (async_stage.prepare_args): the same line
            with pytest.raises(RuntimeError, match=msg):
                server_backend(s.url)
    finally:
        s.close()


def test_no_server_at_the_url_is_one_line():
    import socket
    from posttrain.rollout.async_stage import server_backend
    with socket.socket() as sk:  # a port nothing listens on
        sk.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sk.getsockname()[1]}"
    with pytest.raises(RuntimeError, match="no vLLM server answers") as e:
        server_backend(url)
    assert url in str(e.value) and "\n" not in str(e.value)


def test_ipc_is_refused_with_several_training_processes():
    s = Stub({"weight_transfer_config": {"backend": "ipc"}, "model_config": {"logprobs_mode": "processed_logprobs"}})
    try:
        with pytest.raises(RuntimeError, match="CUDA-IPC weight transfer is for one training process"):
            VLLMServerEngine(s.url, temperature=1.0, max_tokens=2, world_size=2)
    finally:
        s.close()


@pytest.mark.parametrize("policy, sent", [("priority", True), ("fcfs", False), (None, False)])
def test_priority_scheduling_server_gets_each_groups_step(policy, sent):
    """Under `--scheduling-policy priority` a completion carries the step its group is for (vLLM
    serves lower first); under fcfs nothing is sent, since vLLM refuses a nonzero priority there."""
    info = {"weight_transfer_config": {"backend": "nccl"}, "model_config": {"logprobs_mode": "processed_logprobs"}}
    if policy:
        info["scheduler_config"] = {"policy": policy}
    s = Stub(info)
    eng = VLLMServerEngine(s.url, temperature=1.0, max_tokens=2, trl_generation=FakeTRLGeneration())
    try:
        jobs = [RolloutJob(idx=0, prompt_ids=[1], n=2, version=0, seed=10, step=3),
                RolloutJob(idx=1, prompt_ids=[2], n=1, version=0, seed=20, step=1),
                RolloutJob(idx=2, prompt_ids=[3], n=1, version=0, seed=30)]
        [f.result(timeout=30) for f in eng.submit(jobs)]
    finally:
        eng.close()
        s.close()
    got = {b["seed"]: b.get("priority") for b in s.bodies}
    assert got == ({10: 3, 11: 3, 20: 1, 30: None} if sent else {10: None, 11: None, 20: None, 30: None})
