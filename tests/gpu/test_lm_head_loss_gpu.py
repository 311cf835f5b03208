"""TRL's chunked LM head (trl.kernels.ChunkedLogProbFunction: the Triton path SFT's loss, DPO's and
GRPO's log-probs take on CUDA) against the stock path (bf16 logits, fp32 log-softmax), both judged
against the same head in fp32: a 16K packed row, the 7B's width and 100K vocabulary.

The stock path rounds every logit to bf16 before the softmax; TRL's accumulates the projection in
fp32 from the same bf16 operands, so it must be no farther from fp32 (FACTOR as in
tests/gpu/test_fused_layers.py), for the log-probs and for the gradients of hidden states and weight.
"""

from __future__ import annotations

import pytest
import torch
from test_packing_gpu import rel

pytestmark = pytest.mark.gpu

FACTOR = 1.25
N, H, V = 16384, 3840, 100352


def reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, g: torch.Tensor, chunk: int = 2048):
    """fp32 log-probs of targets and the gradients of sum(g * logp) wrt h and w, chunk by chunk."""
    h32, w32 = h.float(), w.float()
    logp, dh, dw = torch.empty(N, device="cuda"), torch.empty_like(h32), torch.zeros_like(w32)
    for s in range(0, N, chunk):
        z = h32[s:s + chunk] @ w32.T
        p = z.log_softmax(-1)
        logp[s:s + chunk] = p.gather(-1, t[s:s + chunk, None])[:, 0]
        dz = -p.exp_() * g[s:s + chunk, None]  # d(g * (z_t - lse))/dz = g * (onehot - softmax)
        dz[torch.arange(len(dz), device="cuda"), t[s:s + chunk]] += g[s:s + chunk]
        dh[s:s + chunk] = dz @ w32
        dw += dz.T @ h32[s:s + chunk]
    return logp, dh, dw


def grads_of(fn, h, w, g):
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    logp = fn(h, w)
    (logp.float() * g).sum().backward()
    return logp.detach().float(), h.grad.float(), w.grad.float()


def test_chunked_lm_head_is_no_farther_from_fp32_than_the_stock_logits():
    from trl.kernels import ChunkedLogProbFunction

    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(N, H, device="cuda", generator=gen).bfloat16()  # a final norm's output: unit scale
    w = (torch.randn(V, H, device="cuda", generator=gen) * 0.02).bfloat16()
    t = torch.randint(0, V, (N,), device="cuda", generator=gen)
    g = torch.randn(N, device="cuda", generator=gen)  # any downstream loss's weights

    def stock(h, w):  # transformers' LM head, then the fp32 log-softmax (packed_sequence_logps, CE)
        return (h @ w.T).float().log_softmax(-1).gather(-1, t[:, None])[:, 0]

    def chunked(h, w):
        return ChunkedLogProbFunction.apply(h, w, None, t, 1.0, 32768, None, 1.0, ("log_probs",))[0]

    ref = reference(h, w, t, g)
    names = ("log-probs", "d hidden", "d weight")
    for name, r, a, b in zip(names, ref, grads_of(stock, h, w, g), grads_of(chunked, h, w, g)):
        e_stock, e_chunked = rel(a, r), rel(b, r)
        print(f"\n{name}: rel. error vs fp32: stock {e_stock:.3e}, chunked {e_chunked:.3e}")
        assert e_chunked <= FACTOR * e_stock, name
