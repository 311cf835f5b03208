"""Every stage under `accelerate launch` with DeepSpeed ZeRO-3 on 2 processes (CPU, gloo): the path the
7B recipes take on GPUs, end to end on the tiny model. Checks what only shows with several processes:
TRL's trainers under ZeRO-3, the reference precompute dealt over processes, the ZeRO-3 gather when a
stage saves, one writer for metrics and outputs."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (.[dev])")]

OVERRIDES = [
    "model.name=tiny", "model.tokenizer=tiny", "model.dtype=float32",
    "stages.sft.max_length=512", "stages.sft.batch_tokens=2048", "stages.sft.bf16=false", "stages.sft.max_steps=2",
    "stages.dpo.max_length=2048", "stages.dpo.batch_pairs=8", "stages.dpo.bf16=false", "stages.dpo.max_steps=2",
    "stages.dpo.gradient_checkpointing=false",
    "stages.rl.engine=hf", "stages.rl.max_steps=2", "stages.rl.prompts_per_step=4", "stages.rl.micro_batch_size=8",
    "stages.rl.max_completion_length=16", "stages.rl.max_length=144", "stages.rl.bf16=false",
    "stages.rl.gradient_checkpointing=false",
]


def test_all_stages_under_zero3_on_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    acc = tmp_path / "zero3_cpu.yaml"
    acc.write_text(f"""compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  deepspeed_config_file: {ROOT / 'recipes/deepspeed/zero3.json'}
  zero3_init_flag: true
machine_rank: 0
main_process_port: {port}
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
use_cpu: true
""")
    small = tmp_path / "dpo_small.yaml"  # the reference precompute is the slow part on CPU
    small.write_text("name: dpo-small\nseed: 0\nsources:\n  - {path: 'builtin:synthetic_prefs', split: test, count: 32}\n")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(acc), "-m", "posttrain", "run",
           str(ROOT / "benchmarks/recipes/olmo-hybrid-7b-throughput.yaml"), "--mix", f"dpo={small}",
           f"output_dir={run}", *OVERRIDES]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("finished in") == 1  # only the main process prints
    for stage in ("sft", "dpo", "rl"):
        assert (run / stage / "DONE").is_file()
        assert (run / stage / "model" / "model.safetensors").is_file()  # gathered from the ZeRO-3 shards
        recs = [json.loads(x) for x in (run / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in recs if "loss" in r]
        assert steps == [1, 2], (stage, steps)  # one writer: each step logged once
    dpo = [json.loads(x) for x in (run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_s" in r for r in dpo)  # packed DPO counts its real tokens
