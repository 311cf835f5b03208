"""model.fused_layers on the CPU machine: which modules are swapped, and CPU tensors keep the stock
math (fla's kernels are CUDA-only; the parity of the kernels themselves is tests/gpu/test_fused_layers.py)."""

import pytest
import torch

from posttrain.model.fused import fuse_layers
from posttrain.model.tiny import build_tiny_model


def test_fuse_layers_swaps_every_norm_and_mlp_and_cpu_tensors_keep_the_stock_math():
    model = build_tiny_model(seed=0)
    ids = torch.randint(0, model.config.vocab_size, (2, 17))
    before = model(input_ids=ids).logits
    counts = fuse_layers(model)
    layers = model.config.layer_types
    n_attn = layers.count("full_attention")
    assert counts == {"rms_norm": 2 * len(layers) + 2 * n_attn + 1, "mlp": len(layers), "rotary": n_attn}
    assert torch.equal(model(input_ids=ids).logits, before)


def fla_rotary_contract(x, cos, sin):
    """fla's `rotary_embedding` as its docstring and kernel define it (non-interleaved): x [B, T, H, D],
    cache [TR, R]; token t of every row is rotated by cache row t, pairing channel i with i + R."""
    R, T = cos.shape[1], x.shape[1]
    c, s = cos[:T, None, :], sin[:T, None, :]
    x0, x1 = x[..., :R], x[..., R:2 * R]
    return torch.cat([x0 * c - x1 * s, x0 * s + x1 * c, x[..., 2 * R:]], dim=-1)


def test_fused_rotary_feeds_fla_each_tokens_own_angles_in_any_batch_layout():
    """rotate_flat is the plumbing around fla's kernel: flattening a [B, H, T, D] batch to one sequence
    whose cache row t is token t's cos/sin must give the stock rotation for packed rows (positions that
    restart per document) and for left-padded batches alike."""
    from transformers.models.olmo_hybrid import modeling_olmo_hybrid as modeling

    from posttrain.model.fused import rotate_flat
    model = build_tiny_model(seed=0)
    B, T, H, D = 2, 11, 3, model.config.hidden_size // model.config.num_attention_heads
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3], [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]])
    cos, sin = model.model.rotary_emb(torch.zeros(B, T, 1), position_ids)
    g = torch.Generator().manual_seed(0)
    # the attention layer's layout: projections [B, T, H, D] viewed as [B, H, T, D]
    q = torch.randn(B, T, H, D, generator=g).transpose(1, 2)
    k = torch.randn(B, T, H, D, generator=g).transpose(1, 2)
    want = modeling.apply_rotary_pos_emb.__dict__.get("posttrain_stock", modeling.apply_rotary_pos_emb)(q, k, cos, sin)
    got = rotate_flat(fla_rotary_contract, q, k, cos, sin)
    for w, o in zip(want, got):
        assert o.shape == w.shape
        torch.testing.assert_close(o, w, rtol=1e-6, atol=1e-6)
    # and the flattening is not vacuous: a cache that ignores each row's own positions is wrong
    shifted = rotate_flat(fla_rotary_contract, q, k, cos.roll(1, dims=1), sin.roll(1, dims=1))
    assert not torch.allclose(shifted[0], want[0], atol=1e-3)


def test_fused_rotary_leaves_cpu_tensors_and_stock_models_on_the_stock_code():
    from transformers.models.olmo_hybrid import modeling_olmo_hybrid as modeling
    stock_model, fused_model = build_tiny_model(seed=0), build_tiny_model(seed=0)
    fuse_layers(fused_model)
    assert modeling.apply_rotary_pos_emb.posttrain_stock is not None  # the dispatcher is installed
    fuse_layers(build_tiny_model(seed=1))  # a second fused model does not wrap the dispatcher again
    assert getattr(modeling.apply_rotary_pos_emb.posttrain_stock, "posttrain_stock", None) is None
    ids = torch.randint(0, stock_model.config.vocab_size, (1, 9))
    assert torch.equal(stock_model(input_ids=ids).logits, fused_model(input_ids=ids).logits)


def test_fuse_layers_refuses_a_non_silu_mlp():
    model = build_tiny_model(seed=0)
    model.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        fuse_layers(model)


def test_fused_layers_on_a_cuda_machine_without_fla_says_how_to_opt_out(monkeypatch, tmp_path):
    """CUDA without a working fla: a one-line error naming the recipe and the opt-out; with
    allow_kernel_fallback a warning and the stock layers (the CPU path never gets here)."""
    from types import SimpleNamespace

    from posttrain.model import kernels
    from posttrain.recipe import ModelConfig
    from posttrain.stages import common
    assert ModelConfig().fused_layers is True  # on by default since the fp32 GPU parity test passed
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "fla_problem", lambda device=None: "fla is not installed (pip install flash-linear-attention)")
    model = build_tiny_model(seed=0)
    ctx = SimpleNamespace(name="sft", recipe=SimpleNamespace(source="r.yaml", cfg=SimpleNamespace(
        model=ModelConfig(fused_layers=True, allow_kernel_fallback=False))))
    with pytest.raises(RuntimeError, match=r"^r.yaml: model.fused_layers: fla is not installed .*fused_layers: false"):
        common.fuse_stage_layers(ctx, model)
    ctx.recipe.cfg.model.allow_kernel_fallback = True
    common.fuse_stage_layers(ctx, model)
    assert not any("forward" in vars(m) for m in model.modules())  # nothing swapped
