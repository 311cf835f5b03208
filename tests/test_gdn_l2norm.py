"""The GDN q/k L2 norm in torch (posttrain/model/gdn_l2norm.py): same values and gradients as the
norm it replaces, and the stock model's GDN call still fits it."""

import torch
from transformers.models.olmo_hybrid import modeling_olmo_hybrid as olmo

from posttrain.model.gdn_l2norm import install, l2norm, with_torch_l2norm


def reference(x, eps=1e-6):
    """transformers' torch reference (modeling_olmo_hybrid.l2norm): x * rsqrt(sum(x^2) + eps)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def test_values_and_gradients_match_the_reference_in_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: l2norm(t), (x,))
    dy = torch.randn_like(x)
    (g_ref,) = torch.autograd.grad(reference(x), x, dy)
    (g,) = torch.autograd.grad(l2norm(x), x, dy)
    torch.testing.assert_close(l2norm(x), reference(x), rtol=0, atol=1e-15)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)


def test_bf16_rounds_once_from_fp32():
    torch.manual_seed(1)
    x = torch.randn(4, 7, 96).to(torch.bfloat16)
    assert l2norm(x).dtype == torch.bfloat16
    assert torch.equal(l2norm(x), l2norm(x.float()).to(torch.bfloat16))
    dy = torch.randn(4, 7, 96).to(torch.bfloat16)
    xf = x.float().requires_grad_()
    (g32,) = torch.autograd.grad(reference(xf), xf, dy.float())
    xb = x.clone().requires_grad_()
    (g16,) = torch.autograd.grad(l2norm(xb), xb, dy)
    assert g16.dtype == torch.bfloat16
    # the backward reads the bf16 output, as fla's does: within bf16 rounding of the fp32 gradient
    assert (g16.float() - g32).abs().max() <= 2 ** -7 * g32.abs().max()


def test_wrapper_normalises_and_switches_the_kernel_norm_off():
    seen = {}

    def rule(q, k, v, g=None, beta=None, use_qk_l2norm_in_kernel=False, **kw):
        seen.update(q=q, k=k, flag=use_qk_l2norm_in_kernel, kw=kw)
        return q + v, None

    wrapped = with_torch_l2norm(rule)
    q, k, v = (torch.randn(1, 3, 2, 4) for _ in range(3))
    wrapped(q, k, v, g=None, beta=None, use_qk_l2norm_in_kernel=True, cu_seqlens="cu")
    assert seen["flag"] is False and seen["kw"] == {"cu_seqlens": "cu"}
    torch.testing.assert_close(seen["q"], reference(q))
    torch.testing.assert_close(seen["k"], reference(k))
    wrapped(q, k, v, use_qk_l2norm_in_kernel=False)  # no norm asked: inputs pass through untouched
    assert seen["q"] is q and seen["k"] is k
    assert with_torch_l2norm(wrapped) is wrapped


def test_stock_model_gives_the_same_logits_and_grads_through_the_installed_rule(monkeypatch):
    from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok, seed=0).double()
    ids = torch.randint(5, len(tok), (2, 21))

    def run():
        model.zero_grad()
        out = model(input_ids=ids).logits
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    base, base_g = run()
    monkeypatch.setattr(olmo, "torch_chunk_gated_delta_rule", olmo.torch_chunk_gated_delta_rule)
    install()
    assert getattr(olmo.torch_chunk_gated_delta_rule, "torch_l2norm", False)
    got, got_g = run()
    # the torch GDN reference runs in fp32 whatever its inputs: fp32 rounding is the yardstick
    torch.testing.assert_close(got, base, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_g, base_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_one_compile_serves_every_length():
    """What CUDA runs (_compiled: torch.compile with symbolic shapes) traced at many widths and batch
    sizes, non-contiguous as the GDN's q/k views are: no recompile per length. Dynamo specialises a
    size of 1, so a batch of one row (every packed batch) is a graph of its own: two at most."""
    from torch._dynamo.testing import CompileCounter

    from posttrain.model.gdn_l2norm import _backward, _forward
    torch._dynamo.reset()
    fwd_count, bwd_count = CompileCounter(), CompileCounter()
    fwd = torch.compile(_forward, backend=fwd_count, dynamic=True)
    bwd = torch.compile(_backward, backend=bwd_count, dynamic=True)
    for b, t in ((2, 37), (3, 300), (1, 1100), (4, 65), (1, 9), (5, 2000)):
        mixed = torch.randn(b, t, 3 * 4 * 16).to(torch.bfloat16)
        q = mixed[..., : 4 * 16].view(b, t, 4, 16)  # a view into the conv output, as in the model
        y, rstd = fwd(q, 1e-6)
        ref_y, ref_rstd = _forward(q, 1e-6)
        assert torch.equal(y, ref_y) and torch.equal(rstd, ref_rstd)
        dy = torch.randn_like(q)
        torch.testing.assert_close(bwd(dy, y, rstd), _backward(dy, y, rstd), rtol=0, atol=0)
    assert (fwd_count.frame_count, bwd_count.frame_count) == (2, 2)
