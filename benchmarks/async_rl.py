"""Synchronous colocated GRPO vs async GRPO (vLLM server in its own process, same GPU), on
long-tailed completion lengths and on a fixed length.

The RL stage's own trainer on grpo_step.py's random ~1.36B Olmo Hybrid, 64 prompts x 8 rollouts,
128-token prompts, coin-flip rewards. A random model never stops early, so each completion's
length is drawn instead and set as that request's `max_tokens` (with `ignore_eos`):
- `lognormal:MEAN:CAP`: log-normal with sigma 1 and mu = ln(MEAN) - 1/2 (so its mean is MEAN
  before the cap), capped at CAP. For 2048:8192 (the default here and in scripts/gpu_async_rl.sh)
  the mean after the cap is ~1,890 tokens, the median ~1,240, and 2.8% of completions hit 8K, so
  every step holds ~14: the tail a synchronous step waits for while the engine's batch thins out.
  For 2048:16384: ~1,990, 0.4% at 16K, in 9 steps of 10; but there one 64 x 8 generation ran past
  190 s on a warm H200 engine, too long for a device call (600 s) to hold the two timed steps a
  row needs (the script's header).
- `fixed:N`: every completion N tokens.
Lengths depend only on (seed, prompt, completion), so every mode generates the same tokens.

Modes:
- `sync`: today's stage: vLLM colocated in sleep mode (generate, sleep, train, wake, sync).
  TRL builds one SamplingParams per call, so `llm.generate` is wrapped to give each request its
  own `max_tokens` (benchmark only).
- `async`: `vllm serve` started here on the same GPU (`--gpu-memory-utilization`, CUDA-IPC weight
  transfer), `async_steps` N (0 = the same server, synchronously).
Without a GPU both run a tiny model on the HF engine (a smoke test of the code path).

Reported (steady state: the first step and async's fill steps are dropped): completion tokens
trained per second of wall time between step ends, the trainer's time blocked on rollouts over
wall time, the rollout-vs-trainer logprob gap and KL (by staleness for async), staleness, weight
sync time, peak memory of the trainer and the server. Also the rate over every step from the trainer
being ready (`completion_tokens_per_s_all_steps`), for rows too short for a steady state.

    python benchmarks/async_rl.py --mode sync --lengths lognormal:2048:8192 --steps 4
    python benchmarks/async_rl.py --mode async --async-steps 2 --lengths lognormal:2048:8192 --steps 6
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def length_fn(spec: str, seed: int = 0):
    """Per-completion token limit from (prompt index, completion index).

    >>> f = length_fn("lognormal:2048:16384")
    >>> f(3, 1) == f(3, 1), length_fn("fixed:512")(7, 0)
    (True, 512)
    >>> xs = [length_fn("lognormal:2048:16384")(i, j) for i in range(2000) for j in range(8)]
    >>> 1900 < sum(xs) / len(xs) < 2150 and max(xs) == 16384 and min(xs) >= 1
    True
    """
    kind, *p = spec.split(":")
    if kind == "fixed":
        return lambda idx, j: int(p[0])
    if kind == "lognormal":
        mean, cap = float(p[0]), int(p[1])
        mu = math.log(mean) - 0.5  # sigma 1: E[exp(N(mu, 1))] = exp(mu + 1/2)
        return lambda idx, j: max(1, min(cap, round(random.Random(f"{seed}/{idx}/{j}").lognormvariate(mu, 1.0))))
    raise ValueError(f"--lengths: fixed:N or lognormal:MEAN:CAP, got {spec!r}")


def padding_table(spec: str, prompts: int = 64, rollouts: int = 8, micro: int = 16, steps: int = 50) -> dict:
    """Completion positions the trainer runs per step, over real completion tokens, for a length
    distribution: TRL's stock padding (every row to the step's longest), each micro-batch cut to its
    own longest (posttrain/stages/rl_trim.trimmed_logps, rows in TRL's random order), and cut after
    the rows of the step are dealt into micro-batches by length (regroup_by_length). No GPU needed.

    >>> t = padding_table("fixed:512", steps=2)
    >>> t["stock"] == t["cut"] == t["cut_regrouped"] == 1.0
    True
    """
    from posttrain.stages.rl_trim import regroup_by_length
    f = length_fn(spec)
    tot = {"real": 0, "stock": 0, "cut": 0, "cut_regrouped": 0}
    for s in range(steps):
        lens = [f(s * prompts + i, j) for i in range(prompts) for j in range(rollouts)]
        random.Random(s).shuffle(lens)  # TRL shuffles a step's rows before its micro-batches
        mask = (torch.arange(max(lens))[None] < torch.tensor(lens)[:, None]).long()  # right-padded, as TRL's
        micros = [{"completion_mask": mask[k:k + micro]} for k in range(0, len(lens), micro)]
        tot["real"] += sum(lens)
        tot["stock"] += len(lens) * max(lens)
        tot["cut"] += sum(micro * int(m["completion_mask"].sum(1).max()) for m in micros)
        tot["cut_regrouped"] += sum(micro * int(m["completion_mask"].sum(1).max())
                                    for m in regroup_by_length(micros, len(micros)))
    return {k: round(v / tot["real"], 2) for k, v in tot.items() if k != "real"}


def start_server(model_dir: Path, mem: float, max_len: int, port: int, log: Path,
                 policy: str = "fcfs", max_seqs: int = 1024) -> subprocess.Popen:
    """`vllm serve` with the dev RLHF routes, CUDA-IPC weight transfer and processed logprobs
    (what `trl vllm-serve` sets, trl/scripts/vllm_serve.py), on this GPU. `policy` "priority":
    the engine sends each request's step as its priority (VLLMServerEngine)."""
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model_dir), "--port", str(port),
           "--gpu-memory-utilization", str(mem), "--max-model-len", str(max_len), "--dtype", "bfloat16",
           "--weight-transfer-config", '{"backend": "ipc"}', "--logprobs-mode", "processed_logprobs",
           "--max-num-seqs", str(max_seqs), "--scheduling-policy", policy]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    import requests
    t0 = time.time()
    while time.time() - t0 < 900:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            first = [x for x in text.splitlines() if "Error" in x or "error:" in x][:10]
            raise RuntimeError(f"vllm serve exited {proc.returncode}; first errors:\n" + "\n".join(first)
                               + f"\n...\n{text[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return proc
        except requests.RequestException:
            pass
        time.sleep(2)
    proc.kill()
    raise TimeoutError("vllm serve did not come up in 15 min")


_STATS = re.compile(r"(\d\d-\d\d \d\d:\d\d:\d\d).*Avg generation throughput: ([\d.]+) tokens/s, "
                    r"Running: (\d+) reqs, Waiting: (\d+) reqs, GPU KV cache usage: ([\d.]+)%")


def engine_stats(log: Path | list[str], since: float | None, year: int | None = None) -> dict | None:
    """The server's own stats lines (vLLM's `loggers.py`, INFO, one per 10 s while it has work; none
    while idle) from wall time `since` on: completion tokens it generated per second of wall time,
    the share of that time it had nothing to run (the trainer had not ordered more), mean running
    requests (more running: each decodes slower, so a long completion takes longer), peak waiting
    and KV-cache use. Says whether the engine or the trainer set the pace.

    >>> line = ("(APIServer pid=1) INFO 12-07 19:49:12 [loggers.py:310] Engine 000: Avg prompt throughput: 0.0 "
    ...         "tokens/s, Avg generation throughput: 9000.0 tokens/s, Running: 205 reqs, Waiting: 3 reqs, "
    ...         "GPU KV cache usage: 32.1%, Prefix cache hit rate: 0.0%")
    >>> later = line.replace("19:49:12", "19:49:42")  # 20 s idle (no lines), then 10 s of work
    >>> engine_stats([line, later], None, year=2026)
    {'window_s': 40.0, 'gen_tokens_per_s': 4500.0, 'idle_frac': 0.5, 'running_mean': 205.0, 'waiting_max': 3, 'kv_use_max_pct': 32.1}
    """
    lines = log if isinstance(log, list) else (log.read_text(errors="replace").splitlines() if log.is_file() else [])
    year = year or datetime.date.today().year
    rows = []
    for x in lines:
        m = _STATS.search(x)
        if m is None:
            continue
        t = datetime.datetime.strptime(f"{year}-{m[1]}", "%Y-%m-%d %H:%M:%S").timestamp()
        if since is None or t >= since:
            rows.append((t, float(m[2]), int(m[3]), int(m[4]), float(m[5])))
    if not rows:
        return None
    every = 10.0  # vLLM's stats interval: each line covers the 10 s before it
    window = rows[-1][0] - (since if since is not None else rows[0][0] - every)
    busy = every * sum(r[2] > 0 or r[1] > 0 for r in rows)
    return {"window_s": window, "gen_tokens_per_s": round(every * sum(r[1] for r in rows) / window, 1),
            "idle_frac": round(max(0.0, 1 - busy / window), 3),
            "running_mean": round(sum(r[2] for r in rows) / len(rows), 1),
            "waiting_max": max(r[3] for r in rows), "kv_use_max_pct": max(r[4] for r in rows)}


def pace(tokens_per_step: float | None, engine: dict | None, train_s: float | None) -> dict | None:
    """What sets an async row's steady step on one GPU: the seconds the server needs for a step's
    completion tokens at the rate it held beside training, against the trainer's own seconds a step.
    The larger is the step's floor; a measured step above it waited on the tail (or the server idled).

    >>> pace(460_000, {"gen_tokens_per_s": 9200.0}, 33.0)
    {'engine_s_per_step': 50.0, 'train_s_per_step': 33.0, 'bound_s_per_step': 50.0, 'bound': 'engine'}
    >>> pace(460_000, None, 33.0) is None
    True
    """
    if not tokens_per_step or not engine or not engine.get("gen_tokens_per_s") or train_s is None:
        return None
    gen = tokens_per_step / engine["gen_tokens_per_s"]
    return {"engine_s_per_step": round(gen, 1), "train_s_per_step": round(train_s, 1),
            "bound_s_per_step": round(max(gen, train_s), 1), "bound": "engine" if gen >= train_s else "trainer"}


def gpu_memory_by_pid() -> dict[int, float]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
        return {int(p): float(m) / 1024 for p, m in (x.split(",") for x in out.strip().splitlines() if x)}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def dump_stacks_every(seconds: float, stop: threading.Event) -> None:
    """Print every thread's Python stack to stderr every `seconds` until `stop` is set.

    Not faulthandler.dump_traceback_later: its watchdog reads the other threads' frames without the
    GIL, and on 2026-12-07 (H100, Python 3.12) a sync row died of a segfault in the middle of such a
    dump, its last line a vLLM frame at line 0 (a frame being set up), before it wrote its JSON.
    The same crash in the watchdog's dump_frame is CPython issues 131580 and 140815 (GIL builds).
    This thread holds the GIL while it reads, so the frames hold still."""
    def run():
        while not stop.wait(seconds):
            out = [f"--- stacks at {time.strftime('%H:%M:%S')} ---"]
            for tid, frame in sys._current_frames().items():
                out.append(f"Thread {tid:#x}:\n" + "".join(traceback.format_stack(frame)))
            print("\n".join(out), file=sys.stderr, flush=True)
    threading.Thread(target=run, name="stack-dumps", daemon=True).start()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["sync", "async"], required=True)
    ap.add_argument("--async-steps", type=int, default=1)
    ap.add_argument("--weight-sync-steps", type=int, default=1)
    ap.add_argument("--lookahead", type=int, default=None,
                    help="async: steps ahead each step's prompts are ordered (recipe async_lookahead; default the "
                         "bound's most); less leaves slack for groups whose completions run long")
    ap.add_argument("--lengths", default="lognormal:2048:8192")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--vllm-mem", type=float, default=0.35, help="colocated vLLM's share of the GPU (sync)")
    ap.add_argument("--server-mem", type=float, default=0.4, help="the server's share of the GPU (async)")
    ap.add_argument("--scheduling-policy", choices=["fcfs", "priority"], default="fcfs",
                    help="the async server's: priority serves each step's groups before later steps'")
    ap.add_argument("--max-num-seqs", type=int, default=1024,
                    help="the async server's cap on running requests: fewer run each decode step faster, so a "
                         "long completion finishes sooner, at a lower total token rate")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds from start: stop (and report) before a step that would end past it")
    ap.add_argument("--stack-every", type=float, default=120,
                    help="seconds between dumps of every thread's Python stack to stderr (0: off): a long "
                         "silent phase (a kernel compiling, a wait) then says where it is")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "async_rl.json"))
    ap.add_argument("--padding-table", action="store_true", help="print padding_table for --lengths and exit")
    a = ap.parse_args(argv)
    started = time.perf_counter()
    stop_dumps = threading.Event()
    if a.stack_every > 0 and not a.padding_table and torch.cuda.is_available():
        dump_stacks_every(a.stack_every, stop_dumps)
    if a.padding_table:
        t = padding_table(a.lengths, a.prompts, a.rollouts, a.micro_batch)
        print(json.dumps({"lengths": a.lengths, "micro_batch": a.micro_batch, "positions_over_real_tokens": t}))
        return t

    from datasets import Dataset
    from transformers import TrainerCallback

    from benchmarks.rollout import rl_bench_model
    from posttrain.metrics import MetricsWriter, ThroughputCallback, read_metrics
    from posttrain.recipe import GRPOStage
    from posttrain.rollout import async_stage
    from posttrain.rollout.sampler import PromptQueue
    from posttrain.stages.rl import ActiveGRPOTrainer, grpo_config
    from posttrain.vllm_plugin import register
    from reward.coin import coin_flip
    register()

    gpu = torch.cuda.is_available()
    model, tok, work = rl_bench_model(gpu, cpu_dtype="float32")  # engines start from work/init

    lengths = length_fn(a.lengths)
    cap = max(lengths(i, j) for i in range(a.prompts * (a.steps + a.async_steps + 2)) for j in range(a.rollouts))
    rng = random.Random(0)
    rows = [{"prompt": [{"role": "user", "content": "".join(f"<w{rng.randrange(50, model.config.vocab_size - 400)}>"
                                                            for _ in range(a.prompt_len))}]}
            for _ in range(a.prompts * (a.steps + a.async_steps + 2))]
    server = None
    # Logs go straight to the output dir: a run killed at a device call's limit still leaves them.
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    server_log, metrics_file = Path(a.out).with_suffix(".server.log"), Path(a.out).with_suffix(".metrics.jsonl")
    if a.mode == "async" and gpu:
        server = start_server(work / "init", a.server_mem, a.prompt_len + 64 + cap, a.port, server_log,
                              a.scheduling_policy, a.max_num_seqs)
    st = GRPOStage(kind="grpo", mix="-", learning_rate=1e-6, lr_scheduler="constant", max_steps=a.steps, bf16=gpu,
                   micro_batch_size=a.micro_batch, rollouts_per_prompt=a.rollouts, prompts_per_step=a.prompts,
                   max_prompt_length=a.prompt_len + 64, max_completion_length=cap, mask_truncated_completions=False,
                   engine="vllm" if gpu else "hf", vllm_mode="server" if a.mode == "async" else "colocate",
                   vllm_server_base_url=f"http://127.0.0.1:{a.port}" if server else None,
                   vllm_gpu_memory_utilization=a.vllm_mem, logging_steps=1, save_steps=10**6,
                   gradient_checkpointing=gpu,  # micro-batches of 8 rows padded to the longest (16K) completion
                   async_steps=a.async_steps if a.mode == "async" else 0, weight_sync_steps=a.weight_sync_steps,
                   async_lookahead=a.lookahead if a.mode == "async" else None)
    args = grpo_config(st, work / "trainer", [1.0])
    is_async = a.mode == "async"
    if is_async:
        async_stage.prepare_args(args, st)
    ends: list[float] = []
    ends_wall: list[float] = []  # the same, as wall-clock time (the server log's clock)

    def report(mem: dict) -> dict:
        """The row's JSON from the metrics so far: written after every step, so a row that dies
        (a device call's limit, a crash in teardown) still leaves its figures."""
        logs = [r for r in read_metrics(metrics_file) if "time/step_s" in r]
        # First step (autotune) and async's fill steps: with lookahead L (async_steps N by default) the
        # producer orders steps 1..L+1 before training starts, so those train from a backlog the engine
        # made alone; step L+2 is the first whose groups were generated beside training. A row too
        # short keeps fewer out and says so.
        want = 1 + (trainer.rollouts.lookahead if is_async else 0)
        skip = min(want, max(len(ends) - 2, 0))
        steady = logs[skip:]
        tokens = [r.get("completions/mean_length", 0) * a.prompts * a.rollouts for r in logs]
        wall = ends[-1] - ends[skip - 1] if skip else ends[-1] - t0
        rate = sum(tokens[skip:]) / wall if wall > 0 else None
        # Every step from the trainer being ready: unbiased when a row holds few steps (an async row's fill
        # steps are counted, and what is still in flight at the end is not: it understates async).
        rate_all = sum(tokens) / (ends[-1] - t0)

        def mean(k):
            vals = [r[k] for r in steady if r.get(k) is not None]
            return sum(vals) / len(vals) if vals else None
        blocked = [r.get("async/wait_s") if is_async else r.get("time/generation_s") for r in steady]
        gap = {k: mean(k) for k in sorted({k for r in steady for k in r if k.startswith("async/")})}
        engine = engine_stats(server_log, ends_wall[skip - 1] if skip else None) if is_async and gpu else None
        out = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name() if gpu else "cpu",
               "mode": a.mode, "async_steps": a.async_steps if is_async else 0, "weight_sync_steps": a.weight_sync_steps,
               "lookahead": trainer.rollouts.lookahead if is_async else None,
               "scheduling_policy": a.scheduling_policy if is_async else None, "lengths": a.lengths,
               "params": sum(p.numel() for p in model.parameters()),
               "prompts_x_rollouts": f"{a.prompts} x {a.rollouts}", "steps": a.steps, "steady_steps": len(steady),
               "steady_state": skip == want and bool(steady),  # false: the rate includes backlog steps
               "completion_tokens_per_s": rate, "completion_tokens_per_s_all_steps": rate_all,
               "wall_s_per_step": wall / max(len(steady), 1),
               "blocked_on_rollouts_frac": sum(x or 0 for x in blocked) / wall if wall > 0 else None,
               "logprob_gap_abs": mean("sampling/sampling_logp_difference/mean"), "kl_k3": mean("sampling/kl_k3"),
               "is_ratio_min": mean("sampling/importance_sampling_ratio/min"),
               "is_ratio_max": mean("sampling/importance_sampling_ratio/max"),
               "weight_sync_s": mean("time/weight_sync_s"), "mean_completion_len": mean("completions/mean_length"),
               "async": gap,
               "engine": engine,
               "pace": pace(sum(tokens[skip:]) / len(steady) if steady else None, engine, mean("time/train_s")),
               # the metrics reset torch's peak every logging step: the row's peak is the steps' largest
               "trainer_peak_gb": max((r.get("mem/peak_allocated_gb") or 0 for r in logs), default=None) if gpu else None,
               "gpu_gb_by_pid_at_end": {str(k): v for k, v in mem.items()}, "per_step": logs}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
        return out

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())
            ends_wall.append(time.time())
            # A device call has a hard limit: end while a JSON can still be written. An async row
            # runs past its fill steps first (they are short once the fill is in, so their time says
            # nothing of the next); a synchronous step after the warm row is like the next one, so a
            # short sync row may end after one.
            last = ends[-1] - (ends[-2] if len(ends) > 1 else t0)
            print(f"[async_rl] step {len(ends)} ended at {ends[-1] - started:.0f} s (this step {last:.0f} s)", flush=True)
            if (a.time_budget and len(ends) >= (2 + trainer.rollouts.lookahead if is_async else 1)
                    and ends[-1] - started + 1.2 * last > a.time_budget):
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            if ends:  # ThroughputCallback, listed first, has written this step's metrics
                report(gpu_memory_by_pid())

    metrics_file.unlink(missing_ok=True)
    metrics = MetricsWriter(metrics_file)
    queue = PromptQueue(rows, seed=0)
    trainer = ActiveGRPOTrainer(
        model=model, args=args, reward_funcs=[coin_flip], train_dataset=Dataset.from_list(rows), processing_class=tok,
        queue=queue, prompt_rows=rows, active=True, solve_threshold=1.0,
        callbacks=[ThroughputCallback(metrics, "rl", model.config, st.max_prompt_length + cap), StepEnds()],
        rollout_func=async_stage.from_producer if is_async else None)
    ids_to_idx = {}
    if is_async:
        async_stage.attach(trainer, st, queue, rows, tok, work, resume_step=0,
                           max_tokens_fn=lambda i, n: [lengths(i, j) for j in range(n)], ignore_eos=True)
    elif gpu:  # colocated: one SamplingParams per request, same lengths as the server gets
        for i, r in enumerate(rows):
            ids_to_idx[tuple(tok.apply_chat_template(r["prompt"], tokenize=True, return_dict=False,
                                                     add_generation_prompt=True))] = i
        llm = trainer.vllm_generation.llm
        real = llm.generate

        def generate(prompts, sampling_params=None, **kw):
            seen: dict[int, int] = {}
            per = []
            for p in prompts:
                i = ids_to_idx[tuple(p["prompt_token_ids"])]
                j = seen[i] = seen.get(i, -1) + 1
                sp = sampling_params.clone()
                sp.max_tokens, sp.ignore_eos = lengths(i, j), True
                per.append(sp)
            return real(prompts, sampling_params=per, **kw)
        llm.generate = generate
    t0 = time.perf_counter()
    print(f"[async_rl] trainer ready at {t0 - started:.0f} s ({a.mode}, server: {server is not None})", flush=True)

    def stopped(signum, frame):  # `timeout` at the call's limit: say how far the unfinished step got
        now = time.perf_counter()
        print(f"[async_rl] stopped from outside at {now - started:.0f} s: step {len(ends) + 1} had run "
              f"{now - (ends[-1] if ends else t0):.0f} s", flush=True)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stopped)
    try:
        trainer.train()
    finally:
        stop_dumps.set()
        mem = gpu_memory_by_pid()
        if trainer.rollouts is not None:
            trainer.rollouts.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=60)

    out = report(mem)
    print(json.dumps({k: v for k, v in out.items() if k != "per_step"}, indent=1))
    return out


if __name__ == "__main__":
    main()
