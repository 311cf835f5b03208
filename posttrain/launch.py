"""This process's place in a distributed launch, as torchrun / accelerate / deepspeed set it in the
environment. Read from the environment, not torch.distributed, because some callers run before any
process group exists (model build, the RL engine's checkpoint, the CLI deciding who prints)."""

from __future__ import annotations

import os


def rank() -> int:
    """Global rank (0 when not launched distributed)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank within this node: picks the node's GPU, and the node's one writer of node-local files."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Processes over all nodes (one per GPU)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """The one process that writes run files and talks (global rank 0); the same answer as
    accelerate's `PartialState().is_main_process` and the Trainer's `is_world_process_zero`."""
    return rank() == 0
