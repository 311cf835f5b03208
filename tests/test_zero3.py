"""ZeRO-3 on the hybrid: after one step every parameter (GDN A_log, dt_bias, conv, norms included)
moved, and moved as a single-process step on the same batch moves it (tests/dist/zero3_step.py).
Two processes: gloo on CPU here; two GPUs with nccl on the GPU machine."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (.[dev])")


def zero3_step(tmp_path, packed: bool, gpus: int = 0, fused: bool = False) -> dict:
    out = tmp_path / "zero3.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    with socket.socket() as s:  # a free port: the launcher's rendezvous needs a real one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(ROOT / "tests" / "dist" / "zero3_step.py"), str(out)] + (["--packed"] if packed else []) + (["--fused"] if fused else [])
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def check(report: dict, tol: float) -> None:
    params = report["params"]
    assert len(params) == 62  # tiny hybrid: 3 GDN + 1 attention layer
    still = [n for n, v in params.items() if v["moved"] == 0.0]
    assert not still, f"parameters ZeRO-3 left untrained: {still}"
    for name in ("A_log", "dt_bias", "conv1d.weight", "o_norm.weight", "q_norm.weight"):
        assert any(name in n for n in params), name
    worst = max(params, key=lambda n: params[n]["err"] / params[n]["ref_moved"])
    rel = params[worst]["err"] / params[worst]["ref_moved"]
    assert rel < tol, f"{worst}: ZeRO-3 step differs from one process by {rel:.2e} of the update"


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_zero3_step_matches_one_process_cpu(tmp_path, packed):
    check(zero3_step(tmp_path, packed), tol=1e-3)  # fp32: reduction order only


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("packed, fused", [(False, False), (True, False), (True, True)],
                         ids=["padded", "packed", "packed-fused"])
def test_zero3_step_matches_one_process_gpu(tmp_path, packed, fused):
    check(zero3_step(tmp_path, packed, gpus=2, fused=fused), tol=2e-2)  # fla kernels, tf32/bf16 paths
