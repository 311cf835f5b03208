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


def zero_stage() -> int:
    """The DeepSpeed ZeRO stage this launch trains with (0 without DeepSpeed): `accelerate launch`
    exports it when its config names the stage, else the path of the DeepSpeed JSON that holds it
    (accelerate/utils/launch.py, `ACCELERATE_DEEPSPEED_ZERO_STAGE` / `ACCELERATE_DEEPSPEED_CONFIG_FILE`)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return 0
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        return int(os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    import json
    try:
        with open(os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")) as f:
            return int(json.load(f).get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError, TypeError):
        return 0
