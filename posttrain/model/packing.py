"""Make an OlmoHybridForCausalLM exact on packed (padding-free) batches.

Stock transformers 5.23 leaks across document boundaries in three places: the GDN recurrent
state and the short causal conv (its torch fallbacks ignore `cu_seqlens`, and the conv looks
for Dao's causal_conv1d, not fla's), and attention (sdpa ignores `cu_seq_lens`). A packed batch
is one that carries `cu_seq_lens_q` (see posttrain.data.packing); for it:

- GDN layers run fla's `chunk_gated_delta_rule` and `causal_conv1d` with `cu_seqlens` on CUDA
  (and fla's fused gated output norm, for speed), or the transformers torch reference once per
  document (CPU, or the explicit opt-out);
- attention runs a varlen kernel: flash-attn if installed, else flex_attention with a document
  BlockMask on CUDA, else one sdpa call per document. No dense T x T mask is ever built.

Everything is per model instance: the GDN modules get a subclass whose forward handles packed
batches and defers to the original otherwise, the attention goes through a function registered
with transformers' AttentionInterface that defers to the original implementation for unpacked
batches, and a forward pre-hook on the inner model turns the packing keys into one shared
context per forward. Unpacked batches (no `cu_seq_lens_q`), generation and caches included,
run the original code paths.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.models.olmo_hybrid import modeling_olmo_hybrid as olmo

from posttrain.data.packing import NON_MODEL_KEYS
from posttrain.model import kernels as K
from posttrain.model.gdn_l2norm import l2norm

CTX_KEY = "posttrain_packed"


@dataclass
class PackedContext:
    """One forward's document boundaries, shared by every layer (built once, not per layer)."""

    cu_seqlens: torch.Tensor  # int64 on the device: fla's cu_seqlens
    cu_seqlens_cpu: torch.Tensor  # int64 on CPU: spares fla a device sync per layer
    cu_seqlens_i32: torch.Tensor  # int32 on the device: flash-attn's
    bounds: list[tuple[int, int]]
    max_len: int
    kernels: dict
    block_mask: object | None = None
    chunk_indices: torch.Tensor | None = None  # fla's, shared by the conv and GDN calls


@dataclass
class _Settings:
    backend: str
    attention: str
    allow_fallback: bool

    def kernels(self, device_type: str) -> dict:
        return _select(device_type, self.backend, self.attention, self.allow_fallback)


_select = functools.cache(K.select_kernels)


def enable_exact_packing(model, backend: str = "auto", allow_fallback: bool = False,
                         attention: str = "auto") -> dict:
    """Patch an OlmoHybridForCausalLM (or OlmoHybridModel) in place; return which kernels run.

    backend: "auto" | "fla" | "torch"; attention: "auto" | "flash" | "flex" | "sdpa" (see
    posttrain.model.kernels.select_kernels). On CUDA a missing fla/tilelang raises, naming the
    package, unless allow_fallback. Call after any `set_attn_implementation`, which would undo
    the attention part. The report is for the model's device, or CUDA if the model still sits
    on CPU but a GPU is present (trainers move it there later); kernels are re-chosen per
    device at run time by the same rule.
    """
    base = getattr(model, "model", model)
    if not isinstance(base, olmo.OlmoHybridModel):
        raise TypeError(f"expected an OlmoHybridForCausalLM/OlmoHybridModel, got {type(model).__name__}")
    device = next(base.parameters()).device
    target = "cuda" if device.type == "cuda" or torch.cuda.is_available() else "cpu"
    settings = _Settings(backend, attention, allow_fallback)
    report = settings.kernels(target)  # raises here, not mid-training, if fla is missing

    if getattr(base, "_posttrain_packing", None) is None:
        base.register_forward_pre_hook(_pre_forward, with_kwargs=True)
    base._posttrain_packing = settings
    for mod in base.modules():
        if type(mod) is olmo.OlmoHybridGatedDeltaNet:
            mod.__class__ = PackedGatedDeltaNet
    cfg = base.config
    orig = cfg._attn_implementation or "eager"
    if not orig.startswith("posttrain_packed_"):
        cfg._attn_implementation = _register_attention(orig)
    return dict(report)


def _register_attention(orig: str) -> str:
    if orig not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        raise ValueError(f"cannot wrap attention implementation {orig!r}")
    name = f"posttrain_packed_{orig}"
    fallback = olmo.eager_attention_forward if orig == "eager" else ALL_ATTENTION_FUNCTIONS[orig]

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        ctx = kwargs.get(CTX_KEY)
        if ctx is None:
            return fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        return _packed_attention(module, query, key, value, ctx, dropout, scaling), None

    AttentionInterface.register(name, attention)
    # Unpacked batches (generation, padded eval) keep the original implementation's masks.
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[orig])
    return name


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to GPU without a sync: a copy from pageable memory waits for the stream to drain
    (CUDA's rule), which would stop the host from queueing this forward ahead of the GPU."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _pre_forward(module, args, kwargs):
    host = kwargs.get("cu_seq_lens_host")
    for key in NON_MODEL_KEYS:
        kwargs.pop(key, None)
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return args, kwargs
    if kwargs.get("past_key_values") is not None:
        raise ValueError("packed batches (cu_seq_lens_q) cannot continue from a cache")
    ref = kwargs.get("input_ids")
    if ref is None:
        ref = kwargs.get("inputs_embeds")
    if ref is None:
        ref = args[0]
    B, T = ref.shape[:2]
    device = ref.device
    # The collators' host copy spares a device-to-host copy, which syncs (torch.cuda sync debug
    # mode counted 3 syncs at each forward's start on an H100, 2026-12-07; this is one of them).
    if host is not None and len(host) == cu.numel():
        cu_cpu = torch.tensor(host, dtype=torch.long)
    else:
        cu_cpu = cu.detach().to("cpu", torch.long)
    if cu_cpu[0] != 0 or cu_cpu[-1] != B * T or (cu_cpu[1:] < cu_cpu[:-1]).any():
        raise ValueError(f"cu_seq_lens_q must rise from 0 to batch*length = {B * T}, got {cu_cpu.tolist()}")
    bounds = [(a, b) for a, b in zip(cu_cpu[:-1].tolist(), cu_cpu[1:].tolist()) if b > a]
    kern = module._posttrain_packing.kernels(device.type)
    ctx = PackedContext(
        cu_seqlens=cu.to(device, torch.long), cu_seqlens_cpu=cu_cpu,
        cu_seqlens_i32=cu.to(device, torch.int32), bounds=bounds,
        max_len=max(b - a for a, b in bounds), kernels=kern,
    )
    if kern["gdn"] == K.GDN_FLA:
        ctx.chunk_indices = _to_device(K.fla_chunk_indices(cu_cpu), device)
    # Boundaries come from cu_seq_lens alone; seq_idx would trip the stock kernels' guards.
    kwargs.pop("seq_idx", None)
    if kern["attention"] == K.ATTN_FLEX or kwargs.get("position_ids") is None:
        lens = _to_device(torch.tensor([b - a for a, b in bounds]), device)
        doc = torch.repeat_interleave(torch.arange(len(bounds), device=device), lens, output_size=B * T)
        if kwargs.get("position_ids") is None:
            starts = _to_device(torch.tensor([a for a, _ in bounds]), device)
            kwargs["position_ids"] = (torch.arange(B * T, device=device) - starts[doc]).view(B, T)
        if kern["attention"] == K.ATTN_FLEX:
            ctx.block_mask = _document_block_mask(doc)
    kwargs["use_cache"] = False
    # A dict skips transformers' mask construction (a dense T x T mask for packed sdpa).
    kwargs["attention_mask"] = {"full_attention": None, "linear_attention": None}
    kwargs[CTX_KEY] = ctx
    return args, kwargs


def _document_block_mask(doc: torch.Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, kv):
        return (doc[q] == doc[kv]) & (q >= kv)

    n = doc.shape[0]
    return create_block_mask(mask_mod, None, None, n, n, device=doc.device, _compile=doc.is_cuda)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention)


def _flatten_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [1, H, B*T, D]: rows become one token stream, as cu_seqlens index it."""
    B, H, T, D = x.shape
    return x.transpose(0, 1).reshape(1, H, B * T, D) if B > 1 else x


def _packed_attention(module, query, key, value, ctx: PackedContext, dropout: float, scaling):
    B, H, T, D = query.shape
    kind = ctx.kernels["attention"]
    if dropout and kind != K.ATTN_SDPA:
        raise NotImplementedError(f"attention dropout is not supported with {kind}")
    q, k, v = (_flatten_heads(x) for x in (query, key, value))
    if kind == K.ATTN_FLASH:
        from flash_attn import flash_attn_varlen_func
        out = flash_attn_varlen_func(
            q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
            ctx.cu_seqlens_i32, ctx.cu_seqlens_i32, ctx.max_len, ctx.max_len,
            softmax_scale=scaling, causal=True,
        ).unsqueeze(0)
    elif kind == K.ATTN_FLEX:
        flex = _compiled_flex() if q.is_cuda else _eager_flex()
        out = flex(q, k, v, block_mask=ctx.block_mask, scale=scaling,
                   enable_gqa=k.shape[1] != q.shape[1]).transpose(1, 2)
    else:
        # Exactly what an unpacked run of each document does (sdpa, causal, no mask).
        out = torch.cat([
            ALL_ATTENTION_FUNCTIONS["sdpa"](module, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None,
                                            dropout=dropout, scaling=scaling, is_causal=True)[0]
            for a, b in ctx.bounds
        ], dim=1)
    return out.reshape(B, T, H, D)


def _eager_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return flex_attention


_torch_conv = inspect.unwrap(olmo.causal_conv1d_fn)
_torch_gdn = inspect.unwrap(olmo.torch_chunk_gated_delta_rule)


class PackedGatedDeltaNet(olmo.OlmoHybridGatedDeltaNet):
    """OlmoHybridGatedDeltaNet that cuts its conv and recurrent state at document boundaries.

    Installed by swapping an instance's class, so weights, state dicts, deepcopy and pickling
    are untouched. Mirrors the stock forward minus the cache (packed batches carry none).
    """

    def forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
        ctx = kwargs.get(CTX_KEY)
        if ctx is None:
            return super().forward(hidden_states, cache_params=cache_params, attention_mask=attention_mask, **kwargs)
        return self._packed_forward(hidden_states, ctx)

    @force_accelerate_hooks("conv1d")
    def _packed_forward(self, hidden_states: torch.Tensor, ctx: PackedContext) -> torch.Tensor:
        B, T, _ = hidden_states.shape
        N = B * T
        x = hidden_states.reshape(1, N, -1)
        mixed = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        weight = self.conv1d.weight.squeeze(1)
        fla = ctx.kernels["gdn"] == K.GDN_FLA
        if fla:
            chunk_rule, causal_conv1d = K.fla_kernels()
            mixed, _ = causal_conv1d(x=mixed, weight=weight, bias=self.conv1d.bias, activation=self.activation,
                                     cu_seqlens=ctx.cu_seqlens, cu_seqlens_cpu=ctx.cu_seqlens_cpu,
                                     chunk_indices=ctx.chunk_indices)
        else:
            m = mixed.transpose(1, 2)
            mixed = torch.cat([
                _torch_conv(m[:, :, a:b], weight=weight, bias=self.conv1d.bias, activation=self.activation)
                for a, b in ctx.bounds
            ], dim=-1).transpose(1, 2)
        q, k, v = torch.split(mixed, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(1, N, -1, self.head_k_dim)
        k = k.reshape(1, N, -1, self.head_k_dim)
        v = v.reshape(1, N, -1, self.head_v_dim)
        beta = self.b_proj(x).sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2.0
        # Gates in fp32, as the stock forward computes them.
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)
        if fla:
            # q/k normalised in torch: fla's in-kernel norm compiles once per length bucket (gdn_l2norm)
            out, _ = chunk_rule(l2norm(q), l2norm(k), v, g=g, beta=beta, initial_state=None, output_final_state=False,
                                use_qk_l2norm_in_kernel=False, cu_seqlens=ctx.cu_seqlens,
                                cu_seqlens_cpu=ctx.cu_seqlens_cpu, chunk_indices=ctx.chunk_indices)
        else:
            out = torch.cat([
                _torch_gdn(q[:, a:b], k[:, a:b], v[:, a:b], g=g[:, a:b], beta=beta[:, a:b],
                           use_qk_l2norm_in_kernel=True)[0]
                for a, b in ctx.bounds
            ], dim=1)
        gate = self.g_proj(x).reshape(-1, self.head_v_dim)
        out = out.reshape(-1, self.head_v_dim)
        if fla:
            # One fused kernel instead of ~10 eager fp32 passes over N x value_dim (measured
            # ~10% of a packed 1.4B step); same math in fp32, minus one bf16 rounding.
            out = K.fla_rms_norm_gated()(out, gate, self.o_norm.weight, None, activation=self.o_norm.activation,
                                         eps=self.o_norm.variance_epsilon)
        else:
            out = self.o_norm(out, gate)
        return self.o_proj(out.reshape(1, N, -1)).reshape(B, T, -1)
