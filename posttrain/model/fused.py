"""fla's one-pass RMSNorm and SwiGLU kernels in place of the stock OlmoHybrid torch code, on CUDA.

Why: a profile of a packed 16K SFT step (1.36B, benchmarks/RESULTS.md) put 39% of kernel time in
torch elementwise/reduce kernels, the stock model's fp32 RMSNorms and SiLU(gate) x up among them:
each is several memory-bound passes over T x hidden in forward and more in backward. fla, already
the GDN kernel dependency, has fused Triton kernels for both (forward and backward). The 7B has
~66 such norms (input/post norms of every layer, q/k norms of the attention layers, the final norm)
and 32 MLPs.

Only each module's `forward` is replaced; the module calls stay (`norm(x)`, `mlp.down_proj(z)`), so
DeepSpeed ZeRO-3's per-module hooks still gather the weights, and gradient checkpointing is unchanged.
Numerics match the stock code: both normalise in fp32 and round once to the input dtype
(tests/gpu/test_fused_layers.py checks logits and gradients against the fp32 model).

Opt-in (`model.fused_layers: true`) until the 7B stage throughput with it is measured:
    bash scripts/gpu_7b.sh sft model.fused_layers=true
"""

from __future__ import annotations

import types

import torch

FUSED_LAYERS = "fla rms_norm + swiglu"


def _rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if not hidden_states.is_cuda:  # a CPU pass on a GPU machine (export checks): the stock code
        return type(self).forward(self, hidden_states)
    from fla.modules.norm.layernorm import rms_norm
    return rms_norm(hidden_states, self.weight, None, eps=self.variance_epsilon)


def _swiglu_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    if not x.is_cuda:
        return type(self).forward(self, x)
    from fla.modules.activations import swiglu
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def fuse_layers(model) -> dict[str, int]:
    """Swap the stock RMSNorm and SiLU-gated MLP forwards of an OlmoHybrid model for fla's fused
    kernels, in place; returns how many modules of each kind were swapped. CUDA tensors only."""
    from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridMLP, OlmoHybridRMSNorm
    act = getattr(model.config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"fused_layers: the fused MLP is SiLU-gated, this model's hidden_act is {act!r}")
    counts = {"rms_norm": 0, "mlp": 0}
    for m in model.modules():
        if type(m) is OlmoHybridRMSNorm:  # exact type: the gated GDN output norm has its own fla path
            m.forward = types.MethodType(_rms_norm_forward, m)
            counts["rms_norm"] += 1
        elif type(m) is OlmoHybridMLP:
            m.forward = types.MethodType(_swiglu_mlp_forward, m)
            counts["mlp"] += 1
    return counts
