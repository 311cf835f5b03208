"""The GDN layers' q/k L2 norm in torch, so that no kernel compiles once per sequence length.

Why: fla 0.6's `chunk_gated_delta_rule(..., use_qk_l2norm_in_kernel=True)` normalises q and k with
its Triton `l2norm_fwd_kernel` / `l2norm_bwd_kernel`, whose autotune key and `tl.constexpr`
arguments include NB = cdiv(rows, 65536) (rows = batch x length x heads, fla/modules/norm/l2norm.py).
Every new NB compiles and benchmarks all 25 configs again: ~10 s each on an H200, forward and
backward. A fixed-shape SFT step meets one NB; a GRPO step meets dozens, because its micro-batches
are cut to their own longest completion (posttrain/stages/rl_trim.py) and real completion lengths
are long-tailed. On the H200 on 2026-12-01 the 1.36B RL benchmark (log-normal lengths, cap 16K)
sat for 6-9 minutes in its first old-logprob pass at 0% GPU and ~100% of one CPU core: its log shows
the trainer's l2norm_fwd_kernel autotuning once per chunk, NB = 65, 30, 24, 20, ... 4 (the chunks
go longest first), 9-12 s each, 16 times before the run was cut. (vLLM's own copy of the kernel
keys its autotune on D only.)

Here torch does the norm with fla's math: y = x * rsqrt(sum(x^2) + eps) in fp32, rounded once to
x's dtype; the backward keeps only y and the fp32 rstd, as fla's does, and computes
dx = rstd * (dy - sum(dy * y) * y). On CUDA both directions go through torch.compile with symbolic
shapes (one fused kernel each, compiled once for all lengths); on CPU they run eagerly. The chunk
kernel is then called with its own norm off.
"""

from __future__ import annotations

import functools

import torch

EPS = 1e-6  # fla's l2norm_fwd default, and transformers' torch reference's


def _forward(x: torch.Tensor, eps: float):
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 -> fp32; fp64 stays
    rstd = torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)
    return (xf * rstd).to(x.dtype), rstd


def _backward(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    yf, dyf = y.to(rstd.dtype), dy.to(rstd.dtype)
    return (rstd * (dyf - (dyf * yf).sum(-1, keepdim=True) * yf)).to(dy.dtype)


@functools.cache
def _compiled():
    """Eager, the norm is ~10 elementwise passes over q and k: ~3% of a 7B SFT step by a bandwidth
    estimate. Compiled once with symbolic shapes, each direction is one fused kernel for every length:
    one inductor compile per process (cached on disk with the other kernels), not one per length."""
    return torch.compile(_forward, dynamic=True), torch.compile(_backward, dynamic=True)


class _L2Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = (_compiled()[0] if x.is_cuda else _forward)(x, eps)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        y, rstd = ctx.saved_tensors
        return (_compiled()[1] if dy.is_cuda else _backward)(dy, y, rstd), None


def l2norm(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim, computed in fp32, in x's dtype.

    >>> l2norm(torch.tensor([[3.0, 4.0]]), eps=0.0).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    return _L2Norm.apply(x, eps)


def with_torch_l2norm(chunk_rule):
    """`chunk_rule` (fla's chunk_gated_delta_rule, or transformers' wrapper of it) with q/k normalised
    here when the caller asks for the in-kernel norm, and the kernel's own norm switched off."""
    if getattr(chunk_rule, "torch_l2norm", False):
        return chunk_rule

    @functools.wraps(chunk_rule)
    def rule(q, k, v, *args, use_qk_l2norm_in_kernel: bool = False, **kwargs):
        if use_qk_l2norm_in_kernel:
            q, k = l2norm(q), l2norm(k)
        return chunk_rule(q, k, v, *args, use_qk_l2norm_in_kernel=False, **kwargs)
    rule.torch_l2norm = True
    return rule


def install() -> None:
    """Route the stock OlmoHybrid GDN forward (unpacked batches: GRPO's micro-batches, DPO's
    unpacked path, evaluation) through `with_torch_l2norm`. The forward calls the module-level
    `torch_chunk_gated_delta_rule` by name, so this replaces that name, once, for every OlmoHybrid
    model in the process; idempotent. Only where fla runs it (CUDA): the torch reference on CPU
    normalises in torch already."""
    from transformers.models.olmo_hybrid import modeling_olmo_hybrid as olmo
    olmo.torch_chunk_gated_delta_rule = with_torch_l2norm(olmo.torch_chunk_gated_delta_rule)
