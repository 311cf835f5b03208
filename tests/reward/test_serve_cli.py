"""`posttrain serve MODEL_DIR --port N` end to end: a saved model, a real process, loopback only."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_cli_serves_a_saved_model(tmp_path):
    try:
        from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
    except ImportError:
        sys.path.insert(0, str(Path(__file__).parent))
        from _tiny_fallback import build_tiny_model, build_tiny_tokenizer
    tok = build_tiny_tokenizer()
    build_tiny_model(tok, seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.serve", str(tmp_path), "--port", "0", "--name", "t"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "serving DIR on http://127.0.0.1:PORT/v1"
        assert "http://127.0.0.1:" in line, line
        base = line.strip().rsplit(" ", 1)[1]
        models = json.loads(urllib.request.urlopen(base + "/models", timeout=30).read())
        assert models["data"][0]["id"] == "t"
        body = {"model": "t", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
        req = urllib.request.Request(base + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] <= 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
