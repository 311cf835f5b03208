"""vLLM as the RL stage's colocated rollout engine on the hybrid: the environment it needs inside the
trainer, the GDN conv loader fix, and a starting checkpoint in vLLM's naming written once per node."""

from __future__ import annotations

import os
import time
from pathlib import Path

from posttrain.launch import local_rank


def prepare_vllm(work_dir: Path, model, tok) -> None:
    """vLLM on the hybrid: its sampler and in-process engine settings, the GDN conv loader fix, and
    a checkpoint on disk in vLLM's naming for the engine to start from."""
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # fails on the GPU image
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # CUDA is already up in the trainer
    from posttrain.vllm_plugin import register
    register()  # the entry point does this when posttrain is installed; PYTHONPATH runs need it here
    if not is_checkpoint_dir(model.name_or_path):
        import socket
        init = work_dir / f"init_model-{socket.gethostname()}"  # per node: works without a shared disk
        save_once(model, tok, init, local_rank())
        model.name_or_path = str(init)


def is_checkpoint_dir(name_or_path: str | None) -> bool:
    """Whether vLLM can start from this folder: it holds weights. A random or tiny model has no
    name ("" would resolve to the working folder) and a `random:DIR` model only borrowed DIR's config.

    >>> is_checkpoint_dir(""), is_checkpoint_dir(None), is_checkpoint_dir("/no/such/dir")
    (False, False, False)
    """
    d = Path(name_or_path) if name_or_path else None
    return bool(d and d.is_dir() and (any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))))


def save_once(model, tok, path: Path, local_rank: int, timeout_s: float = 3600.0) -> None:
    """Save the model for vLLM once per node: local rank 0 writes, then a READY marker; the other ranks
    of the node wait for it (no process group exists yet to hold a barrier with). A folder without the
    marker (a save killed halfway) is written again; one with it holds the same weights (same key)."""
    ready = path / "READY"
    if local_rank == 0:
        if not ready.is_file():
            model.save_pretrained(path, save_original_format=False)
            tok.save_pretrained(path)
            ready.touch()
        return
    t0 = time.monotonic()
    while not ready.is_file():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{path}: local rank 0 did not finish saving the model for vLLM")
        time.sleep(1.0)
