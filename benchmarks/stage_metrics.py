"""Steady-state figures of one stage run, from the metrics.jsonl every stage writes.

The stages log tokens/s (real tokens, all GPUs), MFU and GPU memory at every logging step (posttrain.metrics);
GRPO also logs its step's time split. The first `--warmup` logged steps carry kernel compilation
and autotuning and are left out; the rest are averaged. Used by scripts/gpu_7b.sh:

    python benchmarks/stage_metrics.py RUN/sft/metrics.jsonl --gpus 2 --out benchmarks/results/7b_sft.json
    python benchmarks/stage_metrics.py --run RUN --stage sft --gpus 2 --out benchmarks/results/7b_sft.json

With --run/--stage a stage that was cut short (no RUN/STAGE yet) is read from its newest attempt
folder, RUN/.work/STAGE-KEY/. With --out the metrics file is copied beside the JSON (OUT stem +
_metrics.jsonl), so the per-step figures come back too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from packing import markdown_table  # noqa: E402

from posttrain.metrics import read_metrics  # noqa: E402
from posttrain.rundir import RunDir  # noqa: E402

KEYS = ("tokens_per_s", "mfu", "loss", "time/generation_s", "time/weight_sync_s", "time/train_s", "time/step_s",
        "time/generation_frac", "rollout/new_tokens_per_s", "sampling/kl_k3", "sampling/sampling_logp_difference/mean",
        "sampling/importance_sampling_ratio/mean", "completions/mean_length", "step_time",
        "mem/peak_allocated_gb", "mem/device_used_gb")


def summarize(records: list[dict], gpus: int, warmup: int = 2) -> dict:
    """Means over logged training steps after the warm-up ones.

    >>> recs = [{"step": s, "tokens_per_s": t, "mfu": t / 1e5} for s, t in ((1, 10.0), (2, 900.0), (3, 1100.0))]
    >>> r = summarize(recs, gpus=2, warmup=1)
    >>> r["steps_measured"], r["tokens_per_s"], r["tokens_per_s_per_gpu"], round(r["mfu"], 6)
    (2, 1000.0, 500.0, 0.01)
    """
    steps = [r for r in records if "loss" in r or "tokens_per_s" in r or "time/step_s" in r]
    kept = steps[warmup:]
    out = {"gpus": gpus, "steps_logged": len(steps), "steps_measured": len(kept), "warmup_steps": warmup}
    for k in KEYS:
        vals = [r[k] for r in kept if isinstance(r.get(k), (int, float))]
        if vals:  # memory: the worst step; the rest: the mean
            out[k.replace("/", "_")] = max(vals) if k.startswith("mem/") else statistics.fmean(vals)
    if "tokens_per_s" in out:
        out["tokens_per_s_per_gpu"] = out["tokens_per_s"] / gpus
    first = next((r for r in records if "first_step_s" in r), None)  # compile + autotune + one step
    if first:
        out["first_step_s"], out["kernel_cache"] = first["first_step_s"], first.get("kernel_cache")
    return out


def find_metrics(run: Path, stage: str) -> Path:
    """RUN/STAGE/metrics.jsonl of a finished stage, else the newest attempt's; one-line error if none."""
    path = RunDir(run).metrics_file(stage)
    if path is None:
        raise SystemExit(f"{run}: no metrics.jsonl for stage {stage!r}: it logged no step")
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", type=Path, nargs="?", help="a metrics.jsonl (or give --run and --stage)")
    ap.add_argument("--run", type=Path, help="a run's output_dir")
    ap.add_argument("--stage", help="the stage's name in that run")
    ap.add_argument("--gpus", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.metrics is None:
        if not (a.run and a.stage):
            ap.error("give a metrics.jsonl, or --run and --stage")
        a.metrics = find_metrics(a.run, a.stage)
    res = summarize(read_metrics(a.metrics), a.gpus, a.warmup)
    try:
        import torch
        res["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except ImportError:
        res["device"] = "unknown"
    res["date"] = datetime.date.today().isoformat()
    res["stage"] = a.metrics.parent.name
    print(markdown_table(["figure", "value"], [[k, f"{v:,.4g}" if isinstance(v, float) else v] for k, v in res.items()]))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))
        shutil.copyfile(a.metrics, a.out.with_name(a.out.stem + "_metrics.jsonl"))
    return res


if __name__ == "__main__":
    main()
