"""GRPO log-probs on each chunk's own width instead of the whole rollout batch's, and the rows of
an optimizer step dealt into micro-batches by length so that the widths are short.

TRL pads every completion of a generation batch to the batch's longest one and slices its
micro-batches (and the old/ref log-prob passes) out of that tensor, so one completion at the 32K
cap makes every row of the step cost 32K tokens of forward and backward. With long-tailed
reasoning lengths that is most of an RL step's training time (issue 21's benchmark: ~0.5% of
completions hit the cap, so nearly every step holds one). Cutting each chunk's columns after its
last attended position is exact: completions are right-padded, the model is causal (attention
and the GDN recurrence alike), and TRL reads log-probs only under the completion mask; the cut
columns come back as zeros so every tensor keeps TRL's width.
"""

from __future__ import annotations

import torch


def last_attended(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's last attended column, -1 for a row with none (a chunk is cut after its rows' max).

    >>> last_attended(torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]])).tolist()
    [2, 3]
    >>> last_attended(torch.zeros(2, 3, dtype=torch.long)).tolist()
    [-1, -1]
    """
    cols = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return torch.where(attention_mask.bool(), cols, -1).amax(1)


def trimmed_logps(logps_fn, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                  compute_entropy=False, compute_aux_loss=False, **extra):
    """`logps_fn` (TRL's `_get_per_token_logps_and_entropies`) chunk by chunk, each chunk cut to its
    own width; multimodal inputs (any extra tensor) go through untouched."""
    if any(v is not None for v in extra.values()):
        return logps_fn(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                        compute_aux_loss, **extra)
    batch_size = batch_size or input_ids.size(0)
    width = input_ids.size(1)
    # Several chunks (the old/ref log-prob passes over a whole generation batch): chunk the rows
    # longest first, so each chunk is cut near its own rows' lengths; rows are independent here.
    last, order = last_attended(attention_mask), None
    if input_ids.size(0) > batch_size:
        order = torch.argsort(last, descending=True, stable=True)
        input_ids, attention_mask, last = input_ids[order], attention_mask[order], last[order]
    widths = (last + 1).clamp(min=1).tolist()  # one device sync for every chunk's width
    logps, ents, aux = [], [], []
    for s in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[s:s + batch_size], attention_mask[s:s + batch_size]
        w = max(max(widths[s:s + batch_size]), width - logits_to_keep + 1)  # whole prompt, >= 1 completion column
        lp, ent, ax = logps_fn(model, ids[:, :w], mask[:, :w], logits_to_keep - (width - w), None,
                               compute_entropy, compute_aux_loss)
        pad = width - w
        logps.append(torch.nn.functional.pad(lp, (0, pad)))
        if ent is not None:
            ents.append(torch.nn.functional.pad(ent, (0, pad)))
        if ax is not None:
            aux.append(ax)
    lp, ent = torch.cat(logps), torch.cat(ents) if ents else None
    if order is not None:
        back = torch.argsort(order)
        lp, ent = lp[back], ent[back] if ent is not None else None
    return lp, ent, torch.stack(aux).mean() if aux else None


# Loss types whose optimizer-step loss is a sum over rows with weights that do not depend on which
# micro-batch a row lands in (TRL 1.16 grpo_trainer._compute_loss): per-sequence means averaged over
# equal micro-batches, a fixed normalizer, or the step's token count. bnpo divides by each
# micro-batch's own token count, so regrouping would reweight its rows.
REGROUP_SAFE = frozenset({"grpo", "sapo", "dr_grpo", "dapo", "cispo", "vespo", "luspo"})


def regroup_by_length(micro_batches: list[dict], per_step: int) -> list[dict]:
    """Within each optimizer step (`per_step` consecutive micro-batches), rows sorted longest
    completion first and dealt back into micro-batches of the same size, so each micro-batch is cut
    (trimmed_logps) near its own rows' lengths instead of the longest of a random draw. Which rows
    train in which optimizer step is TRL's shuffle, unchanged: the step's loss and gradient are the
    same for REGROUP_SAFE loss types. Per-row tensors and lists are reordered; 0-dim tensors (the
    step's token count) are the same in every micro-batch and kept.

    >>> mb = [{"completion_mask": torch.tensor([[1, 0, 0], [1, 1, 1]]), "n": torch.tensor(5), "i": [0, 1]},
    ...       {"completion_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]), "n": torch.tensor(5), "i": [2, 3]}]
    >>> out = regroup_by_length(mb, 2)
    >>> [m["i"] for m in out], [m["completion_mask"].sum(1).tolist() for m in out], int(out[1]["n"])
    ([[1, 2], [0, 3]], [[3, 2], [1, 1]], 5)
    """
    out = []
    for s in range(0, len(micro_batches), per_step):
        block = micro_batches[s:s + per_step]
        rows = {}
        for k, v in block[0].items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                rows[k] = torch.cat([m[k] for m in block])
            elif isinstance(v, list):
                rows[k] = [x for m in block for x in m[k]]
        # stable: ties keep TRL's order
        order = torch.argsort(rows["completion_mask"].sum(1), descending=True, stable=True)
        size = len(order) // len(block)
        for j, m in enumerate(block):
            idx = order[j * size:(j + 1) * size]
            take = idx.tolist()
            out.append({k: (rows[k][idx] if isinstance(rows[k], torch.Tensor) else [rows[k][i] for i in take])
                        if k in rows else v for k, v in m.items()})
    return out
