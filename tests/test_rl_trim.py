"""GRPO log-probs on each chunk's own width (posttrain/stages/rl_trim.py) equal TRL's on the full
padded width, under the completion mask, on the tiny hybrid (GDN + attention) in fp32."""

import torch
import torch.nn.functional as F

from posttrain.model.tiny import build_tiny_model
from posttrain.stages.rl_trim import trimmed_logps


def full_width_logps(model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
                     compute_aux_loss=False, **extra):
    """TRL's computation for a text model: logits of the last `logits_to_keep` tokens, chunked."""
    widths.append(input_ids.size(1))
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep + 1).logits
    logits = logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, -logits_to_keep:, None]).squeeze(-1)
    ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1) if compute_entropy else None
    return lp, ent, None


widths: list[int] = []


def test_trimmed_logps_equal_full_width_under_the_mask():
    torch.manual_seed(0)
    model = build_tiny_model().float().eval()
    vocab = model.config.vocab_size
    P, C = 6, 40
    prompt_lens, comp_lens = [6, 3, 5, 4, 6, 2], [9, 3, 12, 40, 5, 7]  # one row at the cap, in the second chunk
    ids = torch.randint(3, vocab, (6, P + C))
    mask = torch.zeros(6, P + C, dtype=torch.long)
    for r, (p, c) in enumerate(zip(prompt_lens, comp_lens)):
        mask[r, P - p:P + c] = 1  # prompts left-padded, completions right-padded
    ids = ids * mask
    widths.clear()
    with torch.no_grad():
        ref, ref_ent, _ = full_width_logps(model, ids, mask, C, None, True)
        got, ent, aux = trimmed_logps(full_width_logps, model, ids, mask, C, batch_size=3, compute_entropy=True)
    comp_mask = mask[:, P:].bool()
    assert got.shape == ref.shape == (6, C) and ent.shape == ref_ent.shape and aux is None
    torch.testing.assert_close(got[comp_mask], ref[comp_mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[comp_mask], ref_ent[comp_mask], rtol=1e-5, atol=1e-5)
    # chunk 1 (rows 0-2) ends at column P + 12, chunk 2 (rows 3-5) at the cap
    assert widths == [P + C, P + 12, P + C]
    assert (got[:3, 12:] == 0).all()


def test_multimodal_inputs_are_not_trimmed():
    seen = []

    def fn(model, input_ids, *a, **kw):
        seen.append(input_ids.size(1))
        return torch.zeros(input_ids.size(0), a[1]), None, None
    ids, mask = torch.ones(2, 10, dtype=torch.long), torch.ones(2, 10, dtype=torch.long)
    mask[:, 6:] = 0
    trimmed_logps(fn, None, ids, mask, 5, pixel_values=torch.zeros(1))
    trimmed_logps(fn, None, ids, mask, 5)
    assert seen == [10, 6]
