"""fla's fused RMSNorm + SwiGLU (model.fused_layers) against the stock model, bf16, 7B layer shapes.

The bar is bf16 noise, measured the way tests/gpu/test_packing_gpu.py does: the stock model on the
same documents packed in the reverse order (same math, other rounding). The fused model must sit
within a small multiple of that noise from the stock model, for the logits and for every
parameter's gradient, on a packed row (the path SFT and DPO train on).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_packing_gpu import rel, seven_b_layers
from transformers import OlmoHybridForCausalLM

from posttrain.data.packing import IGNORE_INDEX, pack_sequences
from posttrain.model.fused import fuse_layers
from posttrain.model.packing import enable_exact_packing

pytestmark = pytest.mark.gpu

NOISE_FACTOR = 2.0  # other kernels than the stock path: the same rounding is not required
FLOOR = 1e-3  # relative error below which any difference passes
LENGTHS = [700, 1500, 3000, 1]


def run(model, docs: list[list[int]], order: list[int]):
    """Logits of each document (in the original order) and the gradients, from one packed row."""
    batch = pack_sequences([docs[i] for i in order])
    labels = batch.pop("labels").cuda()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    logits = model(**batch, use_cache=False).logits[0].float()
    F.cross_entropy(logits[:-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum").backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    per_doc, at = {}, 0
    for i in order:
        per_doc[i], at = logits[at: at + len(docs[i])].detach(), at + len(docs[i])
    return torch.cat([per_doc[i] for i in range(len(docs))]), grads


def test_fused_layers_match_the_stock_model_within_bf16_noise():
    torch.manual_seed(0)
    with torch.device("cuda"):
        stock = OlmoHybridForCausalLM(seven_b_layers()).to(torch.bfloat16).train()
    fused = copy.deepcopy(stock)
    enable_exact_packing(stock)
    enable_exact_packing(fused)
    counts = fuse_layers(fused)
    # every layer's 2 norms, the attention layer's q/k norms, the final norm; one MLP a layer
    assert counts == {"rms_norm": 4 * 2 + 2 + 1, "mlp": 4}

    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(2, 1024, (n,), generator=g).tolist() for n in LENGTHS]
    fwd = list(range(len(docs)))
    logits, grads = run(stock, docs, fwd)
    logits_rev, grads_rev = run(stock, docs, fwd[::-1])
    logits_fused, grads_fused = run(fused, docs, fwd)

    noise, err = rel(logits_rev, logits), rel(logits_fused, logits)
    print(f"logits rel. error: fused {err:.2e}, layout noise {noise:.2e}")
    assert err <= max(NOISE_FACTOR * noise, FLOOR)
    excess = sorted(((rel(grads_fused[n], grads[n]) - max(NOISE_FACTOR * rel(grads_rev[n], grads[n]), FLOOR), n)
                     for n in grads), reverse=True)
    print(f"worst gradient error over its bar: {excess[0][0]:+.2e} ({excess[0][1]})")
    assert excess[0][0] <= 0, excess[:3]
