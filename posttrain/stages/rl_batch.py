"""Rollout batches of the RL stage: joining refill rounds, picking rows, and the numbers logged per
step (where the time went, how far the engine's log-probs are from the trainer's, refill sizes).
Pure functions over TRL's generation-output dicts, so they test without a trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Tensors aligned with completion tokens are right-padded; prompt tensors left-padded.
_RIGHT = ("completion_ids", "completion_mask", "old_per_token_logps", "sampling_per_token_logps",
          "ref_per_token_logps", "importance_sampling_ratio", "tool_mask")
_LEFT = ("prompt_ids", "prompt_mask")


def cat_batches(parts: list[dict]) -> dict:
    """Concatenate generation outputs along rows, padding sequence dims to the widest part."""
    out = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        if not isinstance(vals[0], torch.Tensor) or vals[0].dim() == 0:
            out[k] = vals[0]
            continue
        if vals[0].dim() >= 2 and k in _RIGHT + _LEFT:
            w = max(v.shape[1] for v in vals)
            vals = [F.pad(v, (w - v.shape[1], 0) if k in _LEFT else (0, w - v.shape[1])) for v in vals]
        out[k] = torch.cat(vals, dim=0)
    return out


def step_time_split(rollout: float, sync: float, step: float, new_tokens: float = 0.0) -> dict[str, float]:
    """Seconds per part of one optimizer step. `step` is training_step's wall time, which holds the
    rollout rounds (TRL generates inside it); a rollout round holds the weight sync (done before
    generating), and generation here includes scoring (and TRL's old-logprob forward where it runs, rl_tis).
    `new_tokens`: completion tokens generated in the step over all processes (dropped groups too),
    so the rollout rate is a lower bound on the engine's (it is charged the whole rollout phase).

    >>> d = step_time_split(rollout=7.0, sync=1.0, step=10.0, new_tokens=600.0)
    >>> d["time/generation_s"], d["time/train_s"], d["time/generation_frac"], d["rollout/new_tokens_per_s"]
    (6.0, 3.0, 0.6, 100.0)
    """
    total, gen = max(step, rollout), rollout - sync
    return {"time/generation_s": gen, "time/weight_sync_s": sync, "time/train_s": total - rollout,
            "time/step_s": total, "time/generation_frac": gen / total if total else 0.0,
            "rollout/new_tokens_per_s": new_tokens / gen if gen > 0 else 0.0}


def refill_size(short: int, seen: int, kept: int, want: int) -> int:
    """Prompts to draw for a refill round: enough to cover `short` missing groups at the signal
    rate seen so far this step (kept / seen groups), never more than a full batch.

    >>> refill_size(short=4, seen=16, kept=12, want=16)  # 75% carry signal: 4 / 0.75 -> 6
    6
    >>> refill_size(short=16, seen=16, kept=0, want=16)  # nothing carried signal yet: a full batch
    16
    """
    return max(1, min(want, -(-short * seen // max(kept, 1)) if kept else want))


def select_rows(batch: dict, idx: torch.Tensor) -> dict:
    return {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}
