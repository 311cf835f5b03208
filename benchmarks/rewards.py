"""Reward throughput on this machine: scores per second for math and code (and the cheap ones).

Why: GRPO scores group_size x batch completions every step; this says whether a reward can
keep up with generation on the target box. Code uses 2 sandbox workers (our 2-core CPU).

    python benchmarks/rewards.py [--seconds 3] [--out benchmarks/results/rewards.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reward import metrics, sandbox  # noqa: E402
from reward.code import code_reward  # noqa: E402
from reward.format import format_think  # noqa: E402
from reward.ifeval import ifeval_reward  # noqa: E402
from reward.math import math_reward  # noqa: E402

BATCH = 16


def math_int_batch():
    comps = [f"<think>adding</think>The answer is {i}" if i % 2 else f"so 2 + 2 = 4 ... #### {i:,}" for i in range(BATCH)]
    return lambda: math_reward(comps, ground_truth=[str(i) for i in range(BATCH)])


def math_latex_batch():
    pairs = [(r"\boxed{\frac{1}{2}}", "0.5"), (r"\boxed{(1, 2]}", "(1,2]"), (r"\boxed{\{2,1\}}", r"\{1,2\}"),
             (r"The answer is $2\sqrt{2}$", r"\sqrt{8}"), (r"\boxed{5\text{ cm}}", "5"), (r"\boxed{x^2+2x+1}", "(x+1)^2")]
    comps = [pairs[i % len(pairs)][0] for i in range(BATCH)]
    golds = [pairs[i % len(pairs)][1] for i in range(BATCH)]
    return lambda: math_reward(comps, ground_truth=golds)


def code_asserts_batch():
    comp = "```python\ndef add(a, b):\n    return a + b\n```"
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
    return lambda: code_reward([comp] * BATCH, tests=[tests] * BATCH, workers=2)


def code_stdio_batch():
    comp = "a, b = map(int, input().split())\nprint(a + b)"
    cases = [{"input": f"{i} {i}", "output": str(2 * i)} for i in range(3)]
    return lambda: code_reward([comp] * BATCH, tests=[cases] * BATCH, workers=2)


def ifeval_batch():
    ids = [["punctuation:no_comma", "length_constraints:number_words", "detectable_format:title"]] * BATCH
    kw = [[{}, {"num_words": 5, "relation": "at least"}, {}]] * BATCH
    comps = ["<<Title>>\nsome words without any commas at all"] * BATCH
    return lambda: ifeval_reward(comps, instruction_id_list=ids, kwargs=kw)


def format_batch():
    comps = ["<think>reasoning</think>answer"] * BATCH
    return lambda: format_think(comps)


def measure(make, seconds: float) -> dict:
    fn = make()
    fn()  # warm-up: lazy imports, sandbox probe, pool start
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        scores = fn()
        assert all(s is not None and s > 0 for s in scores), scores  # a benchmark of failures is worthless
        n += len(scores)
    elapsed = time.perf_counter() - start
    return {"scores": n, "seconds": round(elapsed, 3), "scores_per_s": round(n / elapsed, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="time per benchmark")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/rewards.json"))
    args = p.parse_args(argv)
    benches = {"math/int-fast-path": math_int_batch, "math/latex": math_latex_batch,
               "code/asserts (2 workers)": code_asserts_batch, "code/stdio (2 workers)": code_stdio_batch,
               "ifeval": ifeval_batch, "format_think": format_batch}
    results = {name: measure(make, args.seconds) for name, make in benches.items()}
    print(f"{'reward':<28}{'scores/s':>12}{'scores':>10}")
    for name, r in results.items():
        print(f"{name:<28}{r['scores_per_s']:>12.1f}{r['scores']:>10}")
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "sandbox": sandbox.enforcement(), "batch": BATCH, "results": results, "metrics": metrics.snapshot()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
