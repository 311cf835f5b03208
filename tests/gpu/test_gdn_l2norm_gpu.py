"""The GDN q/k norm in torch (posttrain/model/gdn_l2norm.py) on the GPU: fla's per-length-autotuned
l2norm kernels are never called, and the result is as close to fp32 as fla's in-kernel norm.

Why: fla's l2norm kernels recompile and autotune for every new NB = cdiv(rows, 65536); GRPO's
micro-batches, cut to their own widths, meet a new one nearly every micro-batch (~10 s each on an
H200). A test cannot time that reliably; it can prove those kernels are not on the path.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

FACTOR = 1.25  # as tests/gpu/test_fused_layers.py: same function, rounded once, summed in another order


def _inputs(B, T, H, K, V, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    gate = -torch.nn.functional.softplus(r(B, T, H))  # log decay < 0
    beta = torch.sigmoid(r(B, T, H))
    return [t.to(dtype).requires_grad_() for t in (q, k, v)] + [gate.float().requires_grad_(), beta.to(dtype)]


def _run(rule, dtype, torch_norm):
    from posttrain.model.gdn_l2norm import with_torch_l2norm
    q, k, v, g, beta = _inputs(2, 1000, 4, 96, 192, dtype)
    f = with_torch_l2norm(rule) if torch_norm else rule
    o, _ = f(q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True)
    o.float().square().sum().backward()
    return [o.float().detach()] + [t.grad.float() for t in (q, k, v, g)]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_torch_norm_is_as_close_to_fp32_as_fla_in_kernel_norm():
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as rule
    ref = _run(rule, torch.float32, torch_norm=False)
    fla_bf16 = _run(rule, torch.bfloat16, torch_norm=False)
    ours = _run(rule, torch.bfloat16, torch_norm=True)
    for name, r, a, b in zip(("o", "dq", "dk", "dv", "dg"), ref, fla_bf16, ours):
        print(f"{name}: fla in-kernel {rel(a, r):.3e}  torch norm {rel(b, r):.3e}")
        assert rel(b, r) <= FACTOR * rel(a, r) + 1e-4, name


def test_fla_l2norm_kernels_are_not_called(monkeypatch):
    import fla.ops.gated_delta_rule.chunk as chunk
    from transformers.models.olmo_hybrid import modeling_olmo_hybrid as olmo

    from posttrain.model.gdn_l2norm import install

    def refuse(*a, **k):
        raise AssertionError("fla's l2norm kernel was called")
    monkeypatch.setattr(chunk, "l2norm_fwd", refuse)
    monkeypatch.setattr(chunk, "l2norm_bwd", refuse)
    monkeypatch.setattr(olmo, "torch_chunk_gated_delta_rule", olmo.torch_chunk_gated_delta_rule)
    install()
    cfg = olmo.OlmoHybridConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=4, linear_num_key_heads=4,
                                linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64)
    model = olmo.OlmoHybridForCausalLM(cfg).cuda().to(torch.bfloat16)
    for width in (37, 300, 1100):  # GRPO's micro-batches: one width each
        ids = torch.randint(0, 1000, (3, width), device="cuda")
        model(input_ids=ids).logits.float().mean().backward()
