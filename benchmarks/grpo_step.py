"""A colocated GRPO step on one GPU, timed by part: generation, weight sync, training.

The RL stage's own trainer (ActiveGRPOTrainer over TRL, settings from a GRPOStage through
`grpo_config`) with vLLM colocated in sleep mode, on a random ~1.4B Olmo Hybrid with the 7B's width
ratios and a 100K vocabulary. A random model never stops, so every completion runs to
max_completion_length (the worst case for generation) and truncated completions are kept in the
loss; rewards are coin flips keyed on the text (reward/coin.py) so groups carry advantage and
active sampling never refills.
Step 1 includes vLLM's first-generate autotune (~80 s) and is reported apart from the rest.

    PYTHONPATH=/tmp/site:. python benchmarks/grpo_step.py --steps 4 --out benchmarks/results/grpo_step.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from reward.coin import coin_flip  # noqa: E402

SPLIT = ("time/generation_s", "time/weight_sync_s", "time/train_s", "time/step_s", "time/generation_frac")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--vllm-mem", type=float, default=0.35)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpo_step.json"))
    a = ap.parse_args(argv)

    from datasets import Dataset

    from benchmarks.rollout import rl_bench_model
    from posttrain.metrics import MetricsWriter, ThroughputCallback, read_metrics
    from posttrain.recipe import GRPOStage
    from posttrain.rollout.sampler import PromptQueue
    from posttrain.stages.rl import ActiveGRPOTrainer, grpo_config
    from posttrain.vllm_plugin import register
    register()

    gpu = torch.cuda.is_available()  # without one: a small smoke run of the same code on the hf engine
    model, tok, work = rl_bench_model(gpu)  # engines start from work/init

    rng = random.Random(0)
    rows = [{"prompt": [{"role": "user", "content": "".join(f"<w{rng.randrange(50, 90000)}>"
                                                            for _ in range(a.prompt_len))}]}
            for _ in range(a.prompts * (a.steps + 1))]
    st = GRPOStage(kind="grpo", mix="-", learning_rate=1e-6, lr_scheduler="constant", max_steps=a.steps, bf16=gpu,
                   micro_batch_size=a.micro_batch, rollouts_per_prompt=a.rollouts, prompts_per_step=a.prompts,
                   max_prompt_length=a.prompt_len + 16, max_completion_length=a.new_tokens,
                   mask_truncated_completions=False, engine="vllm" if gpu else "hf", vllm_mode="colocate",
                   vllm_gpu_memory_utilization=a.vllm_mem, logging_steps=1, save_steps=10**6)
    args = grpo_config(st, work / "trainer", [1.0])
    metrics = MetricsWriter(work / "metrics.jsonl")
    trainer = ActiveGRPOTrainer(
        model=model, args=args, reward_funcs=[coin_flip], train_dataset=Dataset.from_list(rows),
        processing_class=tok, queue=PromptQueue(rows, seed=0), prompt_rows=rows, active=True, solve_threshold=1.0,
        callbacks=[ThroughputCallback(metrics, "rl", model.config, st.max_prompt_length + st.max_completion_length)])
    trainer.train()

    logs = [r for r in read_metrics(work / "metrics.jsonl") if "time/step_s" in r]
    later = logs[1:] or logs

    def mean(k, rs):
        vals = [r[k] for r in rs if k in r]
        return sum(vals) / len(vals) if vals else None
    keys = SPLIT + ("tokens_per_s", "sampling/sampling_logp_difference/mean", "sampling/kl_k3",
                    "completions/mean_length", "active/rounds")
    out = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name() if gpu else "cpu",
           "params": sum(p.numel() for p in model.parameters()), "prompts_x_rollouts": f"{a.prompts} x {a.rollouts}",
           "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "micro_batch": a.micro_batch,
           "grad_accum": args.gradient_accumulation_steps, "first_step": {k: logs[0].get(k) for k in keys} if logs
           else None, "later_steps_mean": {k: mean(k, later) for k in keys}, "per_step": logs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"{'step':>5}" + "".join(f"{k.split('/')[-1]:>18}" for k in SPLIT))
    for r in logs:
        print(f"{r['step']:>5}" + "".join(f"{r.get(k, float('nan')):>18.3f}" for k in SPLIT))
    m = out["later_steps_mean"]
    print(f"steps 2+: generation {m['time/generation_s']:.1f} s / step {m['time/step_s']:.1f} s "
          f"= {100 * m['time/generation_frac']:.0f}% (target < 50%), weight sync {m['time/weight_sync_s']:.2f} s, "
          f"logprob gap |d| {m['sampling/sampling_logp_difference/mean']}, KL {m['sampling/kl_k3']}")
    return out


if __name__ == "__main__":
    main()
