"""Preference losses as small pure functions, so tests can derive expected values by hand.

`dpo`:       -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))        (sums of token logprobs)
`dpo_norm`:  the same with each log-ratio divided by its completion length   (open-instruct dpo_norm,
             TRL sigmoid_norm). When policy == reference every log-ratio is 0 and the loss is ln 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "dpo",
             chosen_len: torch.Tensor | None = None, rejected_len: torch.Tensor | None = None) -> dict:
    """Per-pair loss and the implicit rewards TRL logs (beta x log-ratio).

    >>> z = torch.zeros(2)
    >>> round(dpo_loss(z, z, z, z, beta=5.0)["loss"].mean().item(), 6)  # ln 2
    0.693147
    """
    c, r = pi_chosen - ref_chosen, pi_rejected - ref_rejected
    if loss_type == "dpo_norm":
        c, r = c / chosen_len.clamp(min=1), r / rejected_len.clamp(min=1)
    elif loss_type != "dpo":
        raise ValueError(f"unknown DPO loss {loss_type!r}")
    loss = -F.logsigmoid(beta * (c - r))
    return {"loss": loss, "chosen_reward": beta * c.detach(), "rejected_reward": beta * r.detach()}


TRL_LOSS = {"dpo": "sigmoid", "dpo_norm": "sigmoid_norm"}
