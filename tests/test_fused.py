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
    assert counts == {"rms_norm": 2 * len(layers) + 2 * n_attn + 1, "mlp": len(layers)}
    assert torch.equal(model(input_ids=ids).logits, before)


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
