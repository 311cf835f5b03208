"""fla's one-pass RMSNorm and SwiGLU kernels in place of the stock OlmoHybrid torch code, on CUDA.

Why: a profile of a packed 16K SFT step (1.36B, benchmarks/RESULTS.md) put 39% of kernel time in
torch elementwise/reduce kernels, the stock model's fp32 RMSNorms and SiLU(gate) x up among them:
each is several memory-bound passes over T x hidden in forward and more in backward. fla, already
the GDN kernel dependency, has fused Triton kernels for both (forward and backward). The 7B has
~66 such norms (input/post norms of every layer, q/k norms of the attention layers, the final norm)
and 32 MLPs.

Only each module's `forward` is replaced; the module calls stay (`norm(x)`, `mlp.down_proj(z)`), so
DeepSpeed ZeRO-3's per-module hooks still gather the weights, and gradient checkpointing is unchanged.

Numerics (read against transformers 5.23 `OlmoHybridRMSNorm` / `OlmoHybridMLP` and fla 0.6
`layer_norm_fwd_kernel_row` / `swiglu_fwd_kernel`):
- RMSNorm: both upcast x to fp32, take rsqrt(mean(x^2) + eps), multiply by the weight in fp32 and round
  once to the input dtype. (Llama's RMSNorm rounds x_hat before the weight; OlmoHybrid's and fla's do
  not.) The backward of both runs in fp32; dw is summed in fp32 and rounded once. Same function.
- SwiGLU: the stock MLP rounds SiLU(gate) to bf16 and then the product; fla computes
  SiLU(gate) * up in fp32 and rounds once. So fused is *closer* to fp32 than stock, and its distance
  from the stock model is not a layout-noise-sized number: the GPU test judges both against the same
  model in fp32 (tests/gpu/test_fused_layers.py).

On by default on CUDA (`model.fused_layers: false` opts out) since that test passed on an H200 on
2026-12-01: fused bf16 logits are 0.989x, and all gradients 0.992x, as far from fp32 as stock bf16's
(worst single tensor 1.18x, a GDN dt_bias; bars 1.25x overall, 2x per tensor). Parity tests decided
it, not a reading of the sources. 7B SFT at 8K on one H200 went from 9,277 to 10,479 real tokens/s
with it (issue 22; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import types

import torch


def _rms_norm_forward(rms_norm):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not hidden_states.is_cuda:  # a CPU pass on a GPU machine (export checks): the stock code
            return type(self).forward(self, hidden_states)
        return rms_norm(hidden_states, self.weight, None, eps=self.variance_epsilon)
    return forward


def _swiglu_mlp_forward(swiglu):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return type(self).forward(self, x)
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
    return forward


def _fla_forwards():
    """fla's kernels bound into replacement forwards. On a CPU-only machine fla's kernels cannot be
    imported (no triton); the forwards then only ever take their CPU branch."""
    try:
        from fla.modules.activations import swiglu
        from fla.modules.norm.layernorm import rms_norm
    except Exception:  # ImportError, or triton missing inside fla's import
        if torch.cuda.is_available():
            raise
        rms_norm = swiglu = None
    return _rms_norm_forward(rms_norm), _swiglu_mlp_forward(swiglu)


def fuse_layers(model) -> dict[str, int]:
    """Swap the stock RMSNorm and SiLU-gated MLP forwards of an OlmoHybrid model for fla's fused
    kernels, in place; returns how many modules of each kind were swapped. CUDA tensors run fla's
    kernels, CPU tensors the stock code."""
    from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridMLP, OlmoHybridRMSNorm
    act = getattr(model.config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"fused_layers: the fused MLP is SiLU-gated, this model's hidden_act is {act!r}")
    norm_fwd, mlp_fwd = _fla_forwards()
    counts = {"rms_norm": 0, "mlp": 0}
    for m in model.modules():
        if type(m) is OlmoHybridRMSNorm:  # exact type: the gated GDN output norm has its own fla path
            m.forward = types.MethodType(norm_fwd, m)
            counts["rms_norm"] += 1
        elif type(m) is OlmoHybridMLP:
            m.forward = types.MethodType(mlp_fwd, m)
            counts["mlp"] += 1
    return counts
