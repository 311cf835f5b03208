"""Which GDN / short-conv / attention kernels run for packed batches, and what is installed.

On CUDA the fused fla kernels are the only acceptable path: the torch references are ~20x
slower (measured on the H100: 4.1 vs 76.7 ms per GDN layer at T=4096), so falling back silently
would turn a training run into a crawl. A missing package is an error naming it, unless the
recipe opts out with allow_fallback. On CPU the torch references are the point (tests, tiny).

fla is imported lazily: `import fla.ops` needs triton, which CPU torch builds lack.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata

import torch

GDN_FLA = "fla.chunk_gated_delta_rule"
CONV_FLA = "fla.causal_conv1d"
TORCH_PER_DOC = "torch per-document"
NORM_FLA = "fla.rms_norm_gated"
NORM_TORCH = "torch (the model's own)"
ATTN_FLASH = "flash_varlen"
ATTN_FLEX = "flex_attention document mask"
ATTN_SDPA = "sdpa per-document"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ver_tuple(v: str | None) -> tuple[int, ...]:
    out = []
    for part in (v or "0").split("+")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def _is_hopper(device: torch.device | None = None) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device) == (9, 0)


def tilelang_needed(device: torch.device | None = None) -> bool:
    """fla 0.6 refuses Hopper with 3.4 <= Triton < 3.7.1 (wrong gated GDN grads, fla #640)
    and routes that backward kernel to tilelang instead."""
    t = _ver_tuple(_version("triton"))
    return _is_hopper(device) and (3, 4, 0) <= t < (3, 7, 1)


@functools.cache
def _fla_import_error(need_tilelang: bool) -> str | None:
    try:
        importlib.import_module("fla.ops.gated_delta_rule")
        importlib.import_module("fla.modules.causal_conv1d")
    except Exception as e:  # ImportError, or triton failing inside fla's import
        return (f"the fused GDN/conv kernels need flash-linear-attention "
                f"(`pip install flash-linear-attention`); importing it failed: {e!r}")
    if need_tilelang:
        try:
            importlib.import_module("tilelang")
        except Exception as e:
            return (f"fla on Hopper with Triton {_version('triton')} (< 3.7.1) needs tilelang for a "
                    f"correct GDN backward (`pip install tilelang`, or Triton >= 3.7.1); "
                    f"importing tilelang failed: {e!r}")
    return None


def fla_problem(device: torch.device | None = None) -> str | None:
    """Why the fla kernels cannot run on this CUDA device, naming what to install; None if they can."""
    return _fla_import_error(tilelang_needed(device))


def fla_kernels():
    """(chunk_gated_delta_rule, causal_conv1d) from fla; CUDA only."""
    from fla.modules.causal_conv1d import causal_conv1d
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    return chunk_gated_delta_rule, causal_conv1d


def fla_rms_norm_gated():
    """fla's fused norm-then-silu-gate (the GDN output norm), CUDA only."""
    from fla.modules.norm.fused_norm_gate import rms_norm_gated
    return rms_norm_gated


def fla_chunk_indices(cu_seqlens_cpu: torch.Tensor, chunk_size: int = 64):
    """fla's per-chunk (sequence, chunk) table, built once per forward instead of per layer, on the
    host (the caller moves it to the GPU without a sync)."""
    from fla.ops.utils import prepare_chunk_indices
    return prepare_chunk_indices(cu_seqlens_cpu, chunk_size, cu_seqlens_cpu=cu_seqlens_cpu)


def flash_attn_available() -> bool:
    from transformers.utils import is_flash_attn_2_available
    return is_flash_attn_2_available()


def select_kernels(device_type: str, backend: str = "auto", attention: str = "auto",
                   allow_fallback: bool = False) -> dict[str, str]:
    """The kernels packed batches use on a device type ("cuda" or "cpu").

    backend: "auto" (fla on CUDA, torch on CPU), "fla", or "torch" (the reference; on CUDA
    this is itself the explicit opt-out). attention: "auto", "flash", "flex" or "sdpa".
    """
    if backend not in ("auto", "fla", "torch"):
        raise ValueError(f"backend must be auto|fla|torch, got {backend!r}")
    if attention not in ("auto", "flash", "flex", "sdpa"):
        raise ValueError(f"attention must be auto|flash|flex|sdpa, got {attention!r}")
    cuda = device_type == "cuda"
    use_fla = backend == "fla" or (backend == "auto" and cuda)
    if use_fla:
        problem = fla_problem() if cuda else "fla kernels need CUDA"
        if problem and not (allow_fallback and backend == "auto"):
            raise RuntimeError(problem + ("" if backend == "fla" else
                               " (set allow_fallback=True to train on the slow torch path)"))
        use_fla = problem is None
    if attention == "auto":
        attention = ("flash" if flash_attn_available() else "flex") if cuda else "sdpa"
    if attention == "flash" and not flash_attn_available():
        raise RuntimeError("attention='flash' needs flash-attn (`pip install flash-attn`)")
    attn = {"flash": ATTN_FLASH, "flex": ATTN_FLEX, "sdpa": ATTN_SDPA}[attention]
    if use_fla:
        return {"gdn": GDN_FLA, "conv": CONV_FLA, "attention": attn, "gdn_norm": NORM_FLA}
    return {"gdn": TORCH_PER_DOC, "conv": TORCH_PER_DOC, "attention": attn, "gdn_norm": NORM_TORCH}


def kernel_report() -> dict:
    """What `posttrain doctor` prints: versions, GPU, and the kernels packed training would use."""
    cuda = torch.cuda.is_available()
    rep = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "transformers": _version("transformers"),
        "fla": _version("flash-linear-attention") or _version("fla-core"),
        "triton": _version("triton"),
        "tilelang": _version("tilelang"),
        "flash_attn": _version("flash-attn"),
        "tilelang_needed": tilelang_needed() if cuda else False,
    }
    device_type = "cuda" if cuda else "cpu"
    try:
        rep["kernels"] = select_kernels(device_type)
        rep["problem"] = None
    except RuntimeError as e:
        rep["kernels"] = select_kernels(device_type, allow_fallback=True)
        rep["problem"] = str(e)
    # model.fused_layers (posttrain/model/fused.py) needs the same fla install, on CUDA
    rep["fused_layers"] = ("available (on by default: model.fused_layers)" if cuda and rep["problem"] is None
                           else "unavailable (CUDA and fla only)")
    return rep
