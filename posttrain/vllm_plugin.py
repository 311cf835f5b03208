"""vLLM general plugin: lets vLLM 0.26 load the GDN short-conv weights of an Olmo Hybrid
checkpoint saved by transformers 5.x.

Why: `save_pretrained(..., save_original_format=False)` (the only naming vLLM accepts for
the other tensors) writes one fused `model.layers.N.linear_attn.conv1d.weight` of shape
(2*key_dim + value_dim, 1, K) in q|k|v order. vLLM 0.26.0's fused-conv loader
(`olmo_gdn_linear_attn._make_fused_conv1d_weight_loader`) indexes `dims[loaded_shard_id]`
and is called without a shard id for that tensor -> `TypeError: list indices must be
integers or slices, not NoneType`. Separate `q_conv1d/k_conv1d/v_conv1d` tensors fail the
same way, because the weights mapper carries their shard id as a `shard_id` attribute on the
tensor, which this loader never reads (upstream PR 55858).

The fix wraps that factory's loader only: an explicit shard id goes to vLLM's loader as
before; otherwise the tensor's `shard_id` attribute is used; a tensor without one that has
the full fused size is split into its q|k|v sections and each goes through vLLM's own
per-section loader, so tensor-parallel sharding stays vLLM's. Gated on the vLLM version and
on a probe showing the bug, so a fixed vLLM is left alone.

Registered (pyproject) as
    [project.entry-points."vllm.general_plugins"]
    posttrain_olmo_hybrid_conv = "posttrain.vllm_plugin:register"
vLLM calls `register()` in every process it starts. Importable without vLLM; then a no-op.
Check: `python -c "import posttrain.vllm_plugin as p; print(p.register())"`.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys

log = logging.getLogger("posttrain")

TARGET = "vllm.model_executor.layers.mamba.gdn.olmo_gdn_linear_attn"
FACTORY = "_make_fused_conv1d_weight_loader"
BROKEN = ((0, 26), (0, 27))  # [from, to) (major, minor): versions known to have the bug


def vllm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("vllm")
    except PackageNotFoundError:
        return None


def _affected(v: str | None) -> bool:
    if v is None:
        return False
    try:
        mm = tuple(int(x) for x in v.split("+")[0].split(".")[:2])
    except ValueError:
        return False
    return BROKEN[0] <= mm < BROKEN[1]


def _is_broken(factory) -> bool:
    """Probe: does the stock loader fail on a fused tensor with no shard id?"""
    import torch
    param = torch.nn.Parameter(torch.zeros(6, 1, 4), requires_grad=False)
    try:
        factory([2, 2, 2], 1, 0)(param, torch.ones(6, 1, 4))
    except (TypeError, IndexError):
        return True
    return not bool(param.data.eq(1).all())


def fixed_factory(orig):
    """Wrap vLLM's fused-conv loader factory (see module docstring)."""
    def factory(dims, tp_size, tp_rank):
        inner = orig(dims, tp_size, tp_rank)

        def weight_loader(param, loaded_weight, loaded_shard_id=None):
            if loaded_shard_id is None:
                loaded_shard_id = getattr(loaded_weight, "shard_id", None)
            if loaded_shard_id is not None:
                return inner(param, loaded_weight, loaded_shard_id)
            if loaded_weight.shape[0] != sum(dims):
                raise ValueError(f"fused conv1d weight has {loaded_weight.shape[0]} channels, expected "
                                 f"{sum(dims)} (q|k|v = {dims}) and no shard id")
            start = 0
            for i, d in enumerate(dims):  # same q|k|v order as vLLM's fused parameter
                inner(param, loaded_weight[start:start + d], i)
                start += d
        return weight_loader

    factory._posttrain_fixed = True
    return factory


def patch_module(mod) -> bool:
    """Apply the fix to an imported olmo_gdn_linear_attn module; True if it is (now) fixed."""
    orig = getattr(mod, FACTORY, None)
    if orig is None:
        return False
    if getattr(orig, "_posttrain_fixed", False):
        return True
    if not _is_broken(orig):
        log.info("posttrain vllm plugin: %s.%s already handles fused conv weights; left alone", TARGET, FACTORY)
        return False
    setattr(mod, FACTORY, fixed_factory(orig))  # __init__ looks the name up in module globals
    log.info("posttrain vllm plugin: fused GDN conv1d weight loader fixed (vLLM %s)", vllm_version())
    return True


IPC = "vllm.distributed.weight_transfer.ipc_engine"


def exec_without_ray(exec_module, module) -> None:
    """vLLM 0.26's CUDA-IPC weight transfer module imports `ray` at its top, but uses it only for
    its "ray" send mode; async RL sends over http. Where ray is not installed, a bare stand-in
    covers that one import (and is taken back out), so a `vllm serve --weight-transfer-config
    '{"backend": "ipc"}'` starts: without it the engine core died at start (H200, 2026-12-01)."""
    import importlib.util
    import types
    stub = importlib.util.find_spec("ray") is None
    if stub:
        sys.modules["ray"] = types.ModuleType("ray")
    try:
        exec_module(module)
    finally:
        if stub:
            sys.modules.pop("ray", None)


def _exec_patched(exec_module, module) -> None:
    exec_module(module)
    patch_module(module)


HOOKS = {TARGET: _exec_patched, IPC: exec_without_ray}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Hooks the HOOKS modules' first import, so register() imports nothing heavy (vLLM loads
    general plugins early, before its platform and model code)."""

    def find_spec(self, name, path, target=None):
        if name not in HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, HOOKS[name])
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner, hook):
        self._inner, self._hook = inner, hook

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._hook(self._inner.exec_module, module)

    def __getattr__(self, name):  # get_source etc. for inspect / torch.compile
        return getattr(self._inner, name)


def register() -> str:
    """vLLM general-plugin entry point; idempotent. Returns what it did (for logs and tests)."""
    v = vllm_version()
    if v is None:
        return "vllm not installed: nothing to do"
    if not _affected(v):
        return f"vllm {v} is not a known-broken version: nothing to do"
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())  # for IPC, and TARGET when not yet imported
    if TARGET in sys.modules:
        return "patched" if patch_module(sys.modules[TARGET]) else "not needed"
    return "will patch on import"
