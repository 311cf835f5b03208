"""A minimal OpenAI-compatible chat server over any HF causal LM (`posttrain serve MODEL_DIR`).

Enough of the API for our own clients (the LLM-judge reward, quick evals, curl):
`GET /v1/models` and `POST /v1/chat/completions` with messages, max_tokens, temperature,
top_p, seed and logit_bias. One request generates at a time (a lock around
`model.generate`): the point is a dependable loopback endpoint with no extra dependency,
not throughput; use vLLM for that. Standard library HTTP only.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


class _LogitBias:
    """OpenAI `logit_bias` ({token_id: bias}) as a transformers logits processor."""

    def __init__(self, bias: dict[str, float]):
        self.ids = torch.tensor([int(k) for k in bias], dtype=torch.long)
        self.values = torch.tensor([float(v) for v in bias.values()])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.ids] += self.values.to(scores.dtype)
        return scores


def chat_completion(model: Any, tokenizer: Any, body: dict[str, Any], name: str) -> dict[str, Any]:
    """One OpenAI chat.completion response for a request body (raises ValueError if malformed)."""
    from transformers import LogitsProcessorList

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    if int(body.get("n", 1)) != 1:
        raise ValueError("only n=1 is supported")
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    temperature = float(body.get("temperature", 1.0))
    kwargs: dict[str, Any] = {"max_new_tokens": int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=float(body.get("top_p", 1.0)))
    else:
        kwargs.update(do_sample=False)
    if body.get("logit_bias"):
        kwargs["logits_processor"] = LogitsProcessorList([_LogitBias(body["logit_bias"])])
    if body.get("seed") is not None:
        torch.manual_seed(int(body["seed"]))
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    new = out[0, enc["input_ids"].shape[1]:]
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    finish = "stop" if len(new) and int(new[-1]) in eos else "length"
    text = tokenizer.decode(new, skip_special_tokens=True)
    n_prompt, n_new = enc["input_ids"].shape[1], len(new)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": finish}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}}


def _handler(model: Any, tokenizer: Any, name: str, lock: threading.Lock, server_stats: dict):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:  # keep test/trainer output clean
            pass

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "posttrain"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with lock:
                    server_stats["requests"] += 1
                    reply = chat_completion(model, tokenizer, body, name)
            except (ValueError, TypeError, KeyError) as exc:
                self._send(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                return
            self._send(200, reply)

    return Handler


def serve(model: Any, tokenizer: Any, host: str = "127.0.0.1", port: int = 0,
          model_name: str = "posttrain") -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start serving in a daemon thread; port 0 picks a free one (`server.server_address`).

    `server.stats["requests"]` counts chat requests, so callers can check cache hits.
    Stop with `server.shutdown(); server.server_close()`.
    """
    model.eval()
    stats = {"requests": 0}
    server = ThreadingHTTPServer((host, port), _handler(model, tokenizer, model_name, threading.Lock(), stats))
    server.daemon_threads = True
    server.stats = stats  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="posttrain-serve", daemon=True)
    thread.start()
    return server, thread


def main(argv: list[str] | None = None) -> int:
    """`posttrain serve MODEL_DIR [--host H] [--port N] [--name NAME] [--device D]`."""
    p = argparse.ArgumentParser(prog="posttrain serve", description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model id reported by the API (default: MODEL_DIR)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir).to(args.device)
    server, thread = serve(model, tokenizer, args.host, args.port, args.name or args.model_dir)
    host, port = server.server_address[:2]
    print(f"serving {args.model_dir} on http://{host}:{port}/v1", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
