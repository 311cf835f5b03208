"""SFT step throughput: padded batches vs exact packing (ours) vs stock padding-free.

One step = forward, backward and a fused AdamW step, on a ~1.4B OlmoHybrid with the 7B's
width ratios (hidden 2048, 16 layers 3:1 GDN:attention, GDN K/V head dims 96/192, MLP 2.875x,
vocab 100352), bf16 weights. Documents are drawn long-tailed (log-normal, mean ~1K tokens,
clipped to T) and the same pool feeds every mode at a token budget T per step:
- padded: consecutive documents, batch x longest <= T, right-padded, the stock model;
- stock:  best-fit-decreasing rows of <= T tokens, position_ids only (what TRL's padding-free
          collator gives), the stock model: fast-ish but it leaks across documents;
- packed: the same rows through PackedCollator + enable_exact_packing: exact;
- fused:  packed, plus fla's fused RMSNorm and SwiGLU (`model.fused_layers`, posttrain/model/fused.py);
- head:   fused, plus TRL's chunked LM head for the loss (`add_fused_lm_head`, what the SFT stage's
          loss runs through): no [T, 100K] logits in bf16 or fp32. The SFT stage on CUDA = this mode.
Real tokens/s counts document tokens only; MFU credits every mode the same per-document FLOPs
(benchmarks/flops.py) against 798 TFLOP/s.

    PYTHONPATH=. python benchmarks/packing.py [--seq-lens 4096 16384] [--profile]
    PYTHONPATH=. python benchmarks/packing.py --size tiny --device cpu --seq-lens 256  # smoke
    PYTHONPATH=. python benchmarks/packing.py --size 7b-8l --modes packed fused --seq-lens 8192 --profile
    PYTHONPATH=. python benchmarks/packing.py --modes stock packed fused head --seq-lens 16384
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from posttrain.memory import GB  # noqa: E402
from posttrain.model.flops import REFERENCE_PEAK, device_peak_flops, mfu, train_flops  # noqa: E402

from posttrain.data.packing import IGNORE_INDEX, PackedCollator, best_fit_decreasing  # noqa: E402
from posttrain.model.kernels import kernel_report  # noqa: E402
from posttrain.model.packing import enable_exact_packing  # noqa: E402

SIZES = {
    "1b": dict(vocab_size=100352, hidden_size=2048, intermediate_size=5888, num_hidden_layers=16,
               num_attention_heads=16, num_key_value_heads=16, linear_num_key_heads=16,
               linear_num_value_heads=16, linear_key_head_dim=96, linear_value_head_dim=192),
    "7b-8l": dict(vocab_size=100352, hidden_size=3840, intermediate_size=11008, num_hidden_layers=8,  # the 7B's widths
                  num_attention_heads=30, num_key_value_heads=30, linear_num_key_heads=30,
                  linear_num_value_heads=30, linear_key_head_dim=96, linear_value_head_dim=192),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=184, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, linear_num_key_heads=4,
                 linear_num_value_heads=4, linear_key_head_dim=12, linear_value_head_dim=24),
}
PAD = 0


def sample_lengths(n: int, max_len: int, mean: float = 1024, sigma: float = 1.0, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    mu = math.log(mean) - sigma**2 / 2  # log-normal with this mean before clipping
    return [min(max_len, max(8, int(rng.lognormvariate(mu, sigma)))) for _ in range(n)]


def padded_batches(lengths: list[int], budget: int) -> list[list[int]]:
    batches, cur, longest = [], [], 0
    for i, n in enumerate(lengths):
        if cur and max(longest, n) * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    return batches + ([cur] if cur else [])


def padded_inputs(docs: list[list[int]], device) -> dict:
    n = max(map(len, docs))
    ids = torch.full((len(docs), n), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, d in enumerate(docs):
        ids[r, : len(d)] = torch.tensor(d)
        mask[r, : len(d)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


def stock_inputs(batch: dict) -> dict:
    # TRL's padding-free batch: one row, position_ids restarting per document, nothing else.
    return {k: batch[k] for k in ("input_ids", "position_ids", "labels")}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def run(model, opt, batches, docs_of, warmup: int, config, device, fused_head: bool = False) -> dict:
    """Time one pass of SFT steps over `batches` after `warmup` untimed passes over the same
    batches, so every shape's kernel compile/autotune (fla, tilelang, flex) is excluded."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(inputs):
        loss = model(**inputs, use_cache=False, **({"fused_lm_head": True} if fused_head else {})).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        for inputs in batches:
            step(inputs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t = time.perf_counter()
    for inputs in batches:
        loss = step(inputs)
    sync()
    total = time.perf_counter() - t
    real = sum(map(sum, docs_of))
    processed = sum(b["input_ids"].numel() for b in batches)
    flops = sum(train_flops(config, lens) for lens in docs_of)
    return {
        "real_tokens_per_s": real / total,
        "step_s": total / len(batches),
        "real_fraction": real / processed,
        "tflops": flops / total / 1e12,
        "mfu": mfu(flops, total, device_peak_flops() or REFERENCE_PEAK),
        "peak_mem_gb": torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else None,
        "loss": loss.item(),
    }


KERNEL_GROUPS = [  # coarse buckets for "where does the step go"; first match wins
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "sm90_")),
    ("attention (flex)", ("flex", "triton_tem")),
    ("optimizer (fused AdamW)", ("multi_tensor_apply", "adam")),
    ("gdn/conv (fla, tilelang)", ("chunk", "conv", "l2norm", "norm_gated", "recompute", "wy",
                                  "kkt", "delta", "solve_tril", "cumsum", "main_kernel", "kernel_kernel")),
    ("norm/SwiGLU (fla, fused layers)", ("layer_norm", "rms_norm", "swiglu")),
    ("elementwise/reduce (torch)", ("elementwise", "reduce", "copy", "cat", "fill", "index", "softmax", "triton_")),
]


def _phases(model, opt, inputs, fused_head: bool):
    """One training step as (name, run) pairs, in order."""
    state = {}

    def forward():
        state["loss"] = model(**inputs, use_cache=False, **({"fused_lm_head": True} if fused_head else {})).loss

    def optimizer():
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (("forward", forward), ("backward", lambda: state["loss"].backward()), ("optimizer", optimizer))


def _one_step(model, opt, inputs, fused_head: bool) -> None:
    from torch.profiler import record_function

    for name, run in _phases(model, opt, inputs, fused_head):
        with record_function(f"step: {name}"):  # gpu_gaps names gaps by these
            run()


def phase_pace(model, opt, inputs, fused_head: bool, device) -> dict:
    """Per phase of one step (forward, backward, optimizer), the host's time to queue it and the GPU's
    time to run it, in ms. Each phase starts on an empty queue (a sync before it), so a host time at or
    above the GPU's means the host set that phase's pace: each kernel ran as soon as it was queued, and
    a faster kernel would not have shortened the phase. (On CPU the two are one clock.)

    Why: a 7B-width step idled the GPU ~10% of its span in short gaps before fla's GDN forward and
    other small launches (2026-12-07); whether that is the forward being launch-bound throughout or
    only at its start decides between cutting host work and anything else."""
    import time

    cuda = device.type == "cuda"
    out = {}
    for name, run in _phases(model, opt, inputs, fused_head):
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        run()
        host = (time.perf_counter() - t0) * 1e3
        if cuda:
            end.record()
            torch.cuda.synchronize()
        out[name] = {"host_ms": host, "device_ms": start.elapsed_time(end) if cuda else host}
    return out


def _launcher(event, by_id: dict) -> str:
    """The CPU op that launched a kernel and, after `<<`, the outermost op it ran under:
    `aten::mm < aten::linear << autograd::engine::evaluate_function: MmBackward0`."""
    e = by_id.get(getattr(event, "linked_correlation_id", 0) or -1) or by_id.get(("runtime", event.id))
    if e is None:
        return "?"
    if e.name.startswith(("cuda", "cu", "hip")) and e.cpu_parent is not None:
        e = e.cpu_parent  # the aten op the runtime call ran in
    inner, top = [e.name[:50]], e
    while top.cpu_parent is not None:
        top = top.cpu_parent
        if len(inner) < 2:
            inner.append(top.name[:50])
    return " < ".join(inner) + (f" << {top.name[:60]}" if top.name not in inner else "")


def gpu_gaps(events, min_us: float = 20.0, top: int = 12) -> dict:
    """Where the GPU sat idle inside a profiled step: the kernels' span minus their union, and the
    largest idle stretches grouped by the CPU op that launched the kernel ending each one (a gap
    before a kernel means the host was late with it: a device sync, or Python slower than the GPU)."""
    from torch.autograd import DeviceType

    kernels = sorted((e for e in events if e.device_type == DeviceType.CUDA
                      and not getattr(e, "is_user_annotation", False) and "#" not in e.name),
                     key=lambda e: e.time_range.start)
    if not kernels:
        return {"span_ms": 0.0, "idle_ms": 0.0, "gaps": []}
    # A kernel names its launch either by linked_correlation_id (the aten op, which lists the kernel)
    # or by sharing its CUPTI id with the runtime call (cudaLaunchKernel, nested in the aten op), as
    # torch versions differ; profiler-internal events ("Activity Buffer Request") reuse ids, so neither
    # lookup takes an event that is not of that kind.
    by_id = {e.id: e for e in events if e.device_type == DeviceType.CPU and getattr(e, "kernels", None)}
    by_id.update({("runtime", e.id): e for e in events
                  if e.device_type == DeviceType.CPU and e.name.startswith(("cuda", "cu", "hip"))})
    idle, end, by_op = 0.0, kernels[0].time_range.end, {}
    for k in kernels[1:]:
        gap = k.time_range.start - end
        if gap > 0:
            idle += gap
            if gap >= min_us:
                op = _launcher(k, by_id)
                n, us = by_op.get(op, (0, 0.0))
                by_op[op] = (n + 1, us + gap)
        end = max(end, k.time_range.end)
    rows = sorted(by_op.items(), key=lambda kv: -kv[1][1])[:top]
    return {"span_ms": (end - kernels[0].time_range.start) / 1e3, "idle_ms": idle / 1e3,
            "gaps": [{"before": op, "count": n, "ms": us / 1e3} for op, (n, us) in rows]}


def host_syncs(fn) -> list[dict]:
    """Each place one call of `fn` made the host wait for the GPU (torch's sync debug mode: .item(),
    .tolist(), boolean indexing, a copy to the CPU), as file:line with a count. A sync inside
    autograd's backward reports the `backward()` line."""
    import collections
    import warnings

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno} {str(w.message)[:60]}"
                                for w in caught if "synchroniz" in str(w.message))
    return [{"where": k, "count": n} for k, n in where.most_common(20)]


def profile_step(model, opt, inputs, device, top: int = 25, fused_head: bool = False) -> dict:
    """Kernel time of one step by group, the top kernels, and the top aten ops by input shapes (the
    ops table says which tensor an elementwise kernel was for, which the kernel name never does)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, record_shapes=True) as prof:
        _one_step(model, opt, inputs, fused_head)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    # On CUDA only kernels: op-level rows would count the same time twice, and so would GPU user
    # annotations ("Optimizer.step#AdamW.step" spans the optimizer's kernels; 2026-12-07 it was
    # counted as a 16.9 ms kernel of its own).
    events = [e for e in prof.key_averages() if not cuda or (
        e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False) and "#" not in e.key)]
    total = sum(getattr(e, key) for e in events) or 1
    groups: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        g = next((g for g, pats in KERNEL_GROUPS if any(p in name for p in pats)), "other")
        groups[g] = groups.get(g, 0.0) + getattr(e, key) / 1e3
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    ops = [e for e in prof.key_averages(group_by_input_shape=True)
           if e.device_type == DeviceType.CPU and e.key.startswith("aten::") and getattr(e, key) > 0]
    ops = sorted(ops, key=lambda e: getattr(e, key), reverse=True)[:top]
    return {
        "total_ms": total / 1e3,
        "gpu_idle": gpu_gaps(prof.events()) if cuda else None,
        "host_syncs": host_syncs(lambda: _one_step(model, opt, inputs, fused_head)) if cuda else None,
        "pace": phase_pace(model, opt, inputs, fused_head, device),
        "groups_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top": [{"name": e.key[:100], "calls": e.count, "ms": getattr(e, key) / 1e3,
                 "share": getattr(e, key) / total} for e in rows],
        "top_ops": [{"name": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count,
                     "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total} for e in ops],
    }


def print_profile(prof: dict, what: str) -> None:
    total = prof["total_ms"]
    print(f"\n{what}, profiled: {total:.1f} ms of kernels")
    for g, ms in prof["groups_ms"].items():
        print(f"  {ms:9.2f} ms {100 * ms / total:5.1f}%  {g}")
    if prof["gpu_idle"]:
        gi = prof["gpu_idle"]
        print(f"GPU idle {gi['idle_ms']:.1f} ms of a {gi['span_ms']:.1f} ms kernel span; gaps by the op after them:")
        for g in gi["gaps"]:
            print(f"  {g['ms']:9.2f} ms  x{g['count']:<5d} {g['before']}")
        print(f"host syncs in one step ({sum(h['count'] for h in prof['host_syncs'])}):")
        for h in prof["host_syncs"]:
            print(f"  x{h['count']:<5d} {h['where']}")
    print("host time to queue / device time to run each phase, from an empty queue (host >= device: launch-bound):")
    for name, p in prof["pace"].items():
        print(f"  {name:10s} host {p['host_ms']:8.2f} ms  device {p['device_ms']:8.2f} ms  ({p['host_ms'] / max(p['device_ms'], 1e-9):.2f}x)")
    rows = [("kernels", prof["top"]), ("aten ops by input shapes (the kernels they launched)", prof["top_ops"])]
    for title, events in rows:
        print(f"top {len(events)} {title}:")
        for e in events:
            line = f"  {e['ms']:9.2f} ms {100 * e['share']:5.1f}%  x{e['calls']:<5d} {e['name']} {e.get('shapes', '')}"
            print(line.rstrip())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="1b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--modes", nargs="+", default=["padded", "stock", "packed"],
                    choices=["padded", "stock", "packed", "fused", "head"])
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes over the timed batches")
    ap.add_argument("--steps", type=int, default=4, help="timed steps (distinct batches) per mode and T")
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--host-sync", action="store_true",
                    help="drop the batches' host copy of the boundaries, so each forward copies them from the GPU "
                         "(a sync), as before 2026-12-07: the baseline for that change")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "packing.json"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    config = OlmoHybridConfig(**SIZES[args.size], pad_token_id=PAD, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    with device:  # initialise on the GPU: a CPU init of 1.4B parameters takes longer than the run
        model = OlmoHybridForCausalLM(config).to(dtype).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    pools = {}
    for T in args.seq_lens:
        lengths = sample_lengths(args.docs, T)
        rng = torch.Generator().manual_seed(T)
        docs = [torch.randint(2, config.vocab_size, (n,), generator=rng).tolist() for n in lengths]
        rows = best_fit_decreasing(lengths, T)
        random.Random(T).shuffle(rows)  # time typical rows, not only the first (fullest) ones
        pools[T] = (lengths, docs, rows)

    results = []
    out = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": {"size": args.size, "params": n_params, **SIZES[args.size]},
        "kernels": kernel_report(),
        "doc_lengths": {str(T): {"mean": sum(p[0]) / len(p[0]), "max": max(p[0])} for T, p in pools.items()},
        "results": results,
    }

    def save():  # after every row, so a run cut short still leaves its figures
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    # Stock modes first, on the unpatched model; then patch in place for ours.
    patched = fused = False
    for mode in [m for m in ("padded", "stock", "packed", "fused", "head") if m in args.modes]:
        if mode in ("packed", "fused", "head") and not patched:
            report, patched = enable_exact_packing(model), True
            print("packed kernels:", report)
        if mode in ("fused", "head") and not fused:
            from posttrain.model.fused import fuse_layers
            print("fused layers:", fuse_layers(model))
            fused = True
        if mode == "head":
            from trl.trainer.utils import add_fused_lm_head
            # the SFT stage's outputs (TRL 1.16 SFTTrainer.__init__): its entropy and top-1 cost time too;
            # the plain forward (other modes) is unchanged by the head
            add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        for T in args.seq_lens:
            lengths, docs, rows = pools[T]
            n = args.steps
            if mode == "padded":
                groups = padded_batches(lengths, T)[:n]
                batches = [padded_inputs([docs[i] for i in g], device) for g in groups]
            else:
                collate = PackedCollator(max_length=T, pad_token_id=PAD)
                groups = rows[:n]
                batches = [to_device(collate([{"input_ids": docs[i]} for i in g]), device) for g in groups]
                if args.host_sync:
                    batches = [{k: v for k, v in b.items() if k != "cu_seq_lens_host"} for b in batches]
                if mode == "stock":
                    batches = [stock_inputs(b) for b in batches]
            docs_of = [[lengths[i] for i in g] for g in groups]
            try:
                r = run(model, opt, batches, docs_of, args.warmup, config, device, fused_head=mode == "head")
            except torch.cuda.OutOfMemoryError:
                r = {"error": "out of memory"}
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # each run starts unfragmented
            r.update(mode=mode, seq_len=T)
            results.append(r)
            save()
            print(fmt_row(r), flush=True)
        if mode in ("packed", "fused", "head") and args.profile:
            T = args.seq_lens[-1]  # batches are still this T's
            prof = profile_step(model, opt, batches[0], device, fused_head=mode == "head")
            print_profile(prof, f"one {mode} step at T={T}")
            results.append({"mode": mode, "seq_len": T, "profile": prof})

    out["ratios"] = ratios(results)
    save()
    print("\n" + table(results))
    for key, r in out["ratios"].items():
        print(f"{key}: {r:.3f}x real tokens/s")
    return out


def ratios(results: list[dict]) -> dict[str, float]:
    """Each mode's real tokens/s over a baseline's, at each T measured in this run (fused over
    packed: what the fused layers buy; head over fused: what the chunked LM head buys; packed over
    padded: what exact packing buys; head over stock: the whole path against stock padding-free).

    >>> ratios([{"mode": "packed", "seq_len": 8, "real_tokens_per_s": 100.0},
    ...         {"mode": "fused", "seq_len": 8, "real_tokens_per_s": 125.0}])
    {'fused/packed T=8': 1.25}
    """
    tps = {(r["mode"], r["seq_len"]): r["real_tokens_per_s"] for r in results if "real_tokens_per_s" in r}
    return {f"{a}/{b} T={t}": tps[(a, t)] / tps[(b, t)]
            for a, b in (("packed", "padded"), ("fused", "packed"), ("head", "fused"), ("packed", "stock"),
                         ("head", "stock")) for (m, t) in tps if m == a and (b, t) in tps}


def fmt_row(r: dict, label: str | None = None, step: str | None = None) -> str:
    """One result line: real tokens/s, MFU, step time, real fraction and peak memory (or the error)."""
    label = label or f"{r['mode']:>7} T={r['seq_len']:>6}"
    if "error" in r:
        return f"{label}: {r['error']}"
    return (f"{label}: {r['real_tokens_per_s']:>9.0f} real tok/s  {100 * r['mfu']:5.1f}% MFU  "
            f"step {step or format(r['step_s'], '.3f') + 's'}  real {100 * r['real_fraction']:.0f}%  "
            f"peak {r['peak_mem_gb'] or 0:.1f} GB")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; short rows (an error message) are padded with empty cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r + [""] * (len(headers) - len(r)))) + " |" for r in rows]
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    rows = [[r["mode"], r["seq_len"], r["error"]] if "error" in r else
            [r["mode"], r["seq_len"], f"{r['real_tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%", f"{r['step_s']:.3f}",
             f"{100 * r['real_fraction']:.0f}%", f"{r['peak_mem_gb'] or 0:.1f}"]
            for r in results if "profile" not in r]
    return markdown_table(["mode", "T", "real tokens/s", "MFU", "step (s)", "real / processed tokens", "peak GB"], rows)


if __name__ == "__main__":
    main()
