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
