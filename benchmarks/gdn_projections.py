"""A GDN layer's six input projections: as the model holds them vs merged into fewer GEMMs.

Why: a profile of a packed step (benchmarks/RESULTS.md, 2026-12-07) put ~15% of kernel time in
torch elementwise kernels, the largest a bf16 add: autograd summing the input gradients of every
module that reads the same tensor. A GDN layer's input feeds six projections (q, k, v, the output
gate g, and the per-head a and b, whose N = heads is tiny), so its backward runs six dX GEMMs and
five adds of T x hidden, and posttrain's packed forward also concatenates q|k|v for the short conv.
Merging the weights removes the adds (and, for q|k|v, the activation concat) at the price of
concatenating the weights every step. Pure torch, no fla: it runs without a compile on a bare GPU.

    python benchmarks/gdn_projections.py [--sizes 7b 1b] [--seq-lens 8192 16384]

Modes (forward + backward, upstream gradients random, weights' gradients accumulated as a trainer does):
- stock: six linears, torch.cat of q|k|v (posttrain/model/packing.py's packed forward today);
- qkv: one GEMM on cat(Wq, Wk, Wv) -> q|k|v already contiguous; g, a, b as they are;
- qkv+rest: one GEMM on cat(Wq, Wk, Wv) -> q|k|v already contiguous, one on cat(Wg, Wa, Wb);
- all: one GEMM on all six weights, then q|k|v made contiguous for the conv.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
# hidden, heads, key head dim, value head dim (benchmarks/packing.py's SIZES)
SIZES = {"7b": (3840, 30, 96, 192), "1b": (2048, 16, 96, 192), "tiny": (64, 4, 12, 24)}
MODES = ("stock", "qkv", "qkv+rest", "all")


def make_weights(size: str, device, dtype):
    hidden, heads, dk, dv = SIZES[size]
    rows = {"q": heads * dk, "k": heads * dk, "v": heads * dv, "g": heads * dv, "a": heads, "b": heads}
    return {n: (torch.randn(r, hidden, device=device, dtype=dtype) * hidden ** -0.5).requires_grad_()
            for n, r in rows.items()}


def project(mode: str, x: torch.Tensor, w: dict) -> tuple[torch.Tensor, ...]:
    """-> (q|k|v contiguous [N, 2K+V], g, a, b): what the packed GDN forward consumes."""
    if mode == "stock":
        mixed = torch.cat([F.linear(x, w["q"]), F.linear(x, w["k"]), F.linear(x, w["v"])], dim=-1)
        return mixed, F.linear(x, w["g"]), F.linear(x, w["a"]), F.linear(x, w["b"])
    if mode in ("qkv", "qkv+rest"):  # q|k|v: 2K+V rows, a multiple of 64 at these widths
        mixed = F.linear(x, torch.cat([w["q"], w["k"], w["v"]]))
        if mode == "qkv":
            return mixed, F.linear(x, w["g"]), F.linear(x, w["a"]), F.linear(x, w["b"])
        g, a, b = F.linear(x, torch.cat([w["g"], w["a"], w["b"]])).split([w["g"].shape[0], w["a"].shape[0],
                                                                         w["b"].shape[0]], dim=-1)
        return mixed, g, a, b
    if mode == "all":
        names = ("q", "k", "v", "g", "a", "b")
        out = F.linear(x, torch.cat([w[n] for n in names])).split([w[n].shape[0] for n in names], dim=-1)
        return torch.cat(out[:3], dim=-1), *out[3:]  # the conv needs q|k|v contiguous: one copy
    raise ValueError(mode)


def time_mode(mode: str, size: str, T: int, device, dtype=torch.bfloat16, iters: int = 20, warmup: int = 3) -> dict:
    w = make_weights(size, device, dtype)
    x = torch.randn(T, SIZES[size][0], device=device, dtype=dtype, requires_grad=True)
    grads = [torch.randn_like(t) for t in project(mode, x.detach(), {k: v.detach() for k, v in w.items()})]

    def step():
        outs = project(mode, x, w)
        torch.autograd.backward(outs, grads)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    ms = (time.perf_counter() - t0) / iters * 1e3
    ref = {k: v.grad.clone() for k, v in w.items()} | {"x": x.grad.clone()}
    return {"mode": mode, "size": size, "seq_len": T, "ms": ms, "grads": ref}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["7b", "1b"], choices=list(SIZES))
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gdn_projections.json"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        for T in args.seq_lens:
            res = []
            for mode in MODES:
                torch.manual_seed(0)
                res.append(time_mode(mode, size, T, device, iters=args.iters))
            # Same function: every gradient of the merged modes matches stock's (bf16 GEMMs of other shapes
            # may round differently; the sums of five adds do too).
            base = res[0]["grads"]
            for r in res:
                r["max_grad_rel_err"] = max(((r["grads"][k].float() - base[k].float()).norm()
                                             / base[k].float().norm().clamp_min(1e-12)).item() for k in base)
                r["x_stock"] = res[0]["ms"] / r["ms"]
                del r["grads"]
                rows.append(r)
                print(f"{size:>4} T={T:6d} {r['mode']:>9}: {r['ms']:8.3f} ms  {r['x_stock']:.3f}x stock  "
                      f"grad rel. diff {r['max_grad_rel_err']:.1e}", flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
