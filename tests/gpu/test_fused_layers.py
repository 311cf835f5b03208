"""fla's fused RMSNorm + SwiGLU (model.fused_layers) against the same model in fp32, 7B layer shapes.

The stock bf16 model and the fused bf16 model are both judged against the same weights run in fp32
(the torch GDN/conv reference per document and per-document sdpa, TF32 off) on one packed row, the
path SFT and DPO train on. The stock model's own distance from fp32 is the bar: fused must be no
farther, within FACTOR, for the logits and for all gradients together, and within TENSOR_FACTOR for
each parameter's gradient alone.

Why FACTOR = 1.25: both bf16 models share every other rounding (GDN kernels, matmuls, attention); the
fused kernels compute the same function as the stock code and round once per output, where the stock
MLP rounds twice (fused.py's docstring has the reading of both sources). A wrong fused forward or
backward (another eps, the weight applied after rounding, a dropped upcast, a wrong gradient) adds an
error of its own; one independent of and as large as the stock's bf16 error already gives
sqrt(2) = 1.41x, so 1.25 catches it while leaving room for reductions summed in another order.
Per tensor the bar is looser: once the inputs differ in the last bit, the downstream bf16 kernels round
differently, so the two models' errors are two draws of one distribution, and for a 30-element tensor
(a GDN layer's A_log) the ratio of two such norms spreads by ~20%; 2.0 is ~5 of those spreads, and a
wrong gradient formula is off by O(1) of the gradient itself, far beyond it.

The first version of this test compared fused with the *stock* bf16 model against a layout noise
(documents packed in reverse order) and failed on an H200 (1.21e-2 vs 3.14e-3): that noise is not
the scale of a second, more precise SwiGLU rounding, which is what fused differs by.
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

FACTOR = 1.25
TENSOR_FACTOR = 2.0
FLOOR = 1e-4  # relative error below which any difference passes (fp32 summation-order scale)
LENGTHS = [700, 1500, 3000, 1]


def run(model, docs: list[list[int]]):
    """Logits (fp32) and every parameter's gradient (fp32) of the summed loss, from one packed row."""
    batch = pack_sequences(docs)
    labels = batch.pop("labels").cuda()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    logits = model(**batch, use_cache=False).logits[0].float()
    F.cross_entropy(logits[:-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum").backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


def test_fused_layers_are_no_farther_from_fp32_than_the_stock_model():
    torch.manual_seed(0)
    with torch.device("cuda"):
        stock = OlmoHybridForCausalLM(seven_b_layers()).to(torch.bfloat16).train()
    fused = copy.deepcopy(stock)
    ref = copy.deepcopy(stock).float()  # the bf16 weights, upcast: weight rounding is not counted
    enable_exact_packing(stock)
    enable_exact_packing(fused)
    enable_exact_packing(ref, backend="torch", attention="sdpa")
    counts = fuse_layers(fused)
    # every layer's 2 norms, the attention layer's q/k norms, the final norm; one MLP a layer
    assert counts == {"rms_norm": 4 * 2 + 2 + 1, "mlp": 4}

    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(2, 1024, (n,), generator=g).tolist() for n in LENGTHS]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        logits_ref, grads_ref = run(ref, docs)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    logits_stock, grads_stock = run(stock, docs)
    logits_fused, grads_fused = run(fused, docs)

    e_stock, e_fused = rel(logits_stock, logits_ref), rel(logits_fused, logits_ref)
    print(f"\nlogits rel. error vs fp32: stock {e_stock:.3e}, fused {e_fused:.3e} ({e_fused / e_stock:.3f}x)")
    assert 1e-4 < e_stock < 5e-2, "the fp32 reference itself looks wrong"
    assert e_fused <= max(FACTOR * e_stock, FLOOR)

    rows = []
    for n in grads_ref:
        s, f = rel(grads_stock[n], grads_ref[n]), rel(grads_fused[n], grads_ref[n])
        rows.append((f / max(s, FLOOR), f, s, n))
    rows.sort(reverse=True)
    print("worst gradient ratios (fused / stock distance from fp32):")
    for ratio, f, s, n in rows[:6]:
        print(f"  {ratio:.3f}x  fused {f:.3e}  stock {s:.3e}  {n}")
    print(f"median ratio {rows[len(rows) // 2][0]:.3f}x over {len(rows)} tensors")
    flat = {k: torch.cat([g[n].reshape(-1) for n in grads_ref]) for k, g in
            (("ref", grads_ref), ("stock", grads_stock), ("fused", grads_fused))}
    e_stock, e_fused = rel(flat["stock"], flat["ref"]), rel(flat["fused"], flat["ref"])
    print(f"all gradients rel. error vs fp32: stock {e_stock:.3e}, fused {e_fused:.3e} ({e_fused / e_stock:.3f}x)")
    assert e_fused <= max(FACTOR * e_stock, FLOOR)
    bad = [(n, f, s) for _, f, s, n in rows if f > max(TENSOR_FACTOR * s, FLOOR)]
    assert not bad, bad[:5]
