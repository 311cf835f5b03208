"""GRPO log-probs on each chunk's own width instead of the whole rollout batch's.

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


def chunk_width(attention_mask: torch.Tensor) -> int:
    """Columns up to and including the last attended position of any row.

    >>> chunk_width(torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]]))
    4
    >>> chunk_width(torch.zeros(2, 3, dtype=torch.long))
    1
    """
    cols = attention_mask.any(dim=0).nonzero()
    return int(cols[-1]) + 1 if len(cols) else 1


def trimmed_logps(logps_fn, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                  compute_entropy=False, compute_aux_loss=False, **extra):
    """`logps_fn` (TRL's `_get_per_token_logps_and_entropies`) chunk by chunk, each chunk cut to its
    own width; multimodal inputs (any extra tensor) go through untouched."""
    if any(v is not None for v in extra.values()):
        return logps_fn(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                        compute_aux_loss, **extra)
    batch_size = batch_size or input_ids.size(0)
    width = input_ids.size(1)
    logps, ents, aux = [], [], []
    for s in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[s:s + batch_size], attention_mask[s:s + batch_size]
        w = max(chunk_width(mask), width - logits_to_keep + 1)  # keep the whole prompt and >= 1 completion column
        lp, ent, ax = logps_fn(model, ids[:, :w], mask[:, :w], logits_to_keep - (width - w), None,
                               compute_entropy, compute_aux_loss)
        pad = width - w
        logps.append(torch.nn.functional.pad(lp, (0, pad)))
        if ent is not None:
            ents.append(torch.nn.functional.pad(ent, (0, pad)))
        if ax is not None:
            aux.append(ax)
    return (torch.cat(logps), torch.cat(ents) if ents else None, torch.stack(aux).mean() if aux else None)
