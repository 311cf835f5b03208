"""GRPO log-probs on each chunk's own width (posttrain/stages/rl_trim.py) equal TRL's on the full
padded width, under the completion mask, on the tiny hybrid (GDN + attention) in fp32."""

import pytest
import torch

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
    # rows are chunked longest first (40, 12, 9 | 7, 5, 3), each chunk cut to its longest, and come
    # back in their own order (the values above are compared row by row)
    assert widths == [P + C, P + C, P + 7]
    assert (got[[1, 4, 5], 7:] == 0).all() and (got[3] != 0).all()


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


def test_regrouped_micro_batches_give_the_same_step_loss_and_gradient(tmp_path):
    """One optimizer step of two micro-batches through the stage's trainer (dapo, TRL's _compute_loss
    with the width cut): TRL's random micro-batches and the length-sorted ones give the same summed
    loss and gradient, and the sorted ones are cut narrower; _prepare_inputs applies the regrouping."""
    from datasets import Dataset
    from trl import GRPOConfig
    from trl.trainer.utils import split_tensor_dict

    from posttrain.model.tiny import build_tiny_tokenizer
    from posttrain.rollout.sampler import PromptQueue
    from posttrain.stages.rl import ActiveGRPOTrainer
    from posttrain.stages.rl_trim import regroup_by_length
    G = 4
    tok = build_tiny_tokenizer("olmo-think")
    rows = [{"prompt": [{"role": "user", "content": f"q {i}"}]} for i in range(8)]

    def alternating(completions, **kw):
        return [float(j % 2) for j in range(len(completions))]
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=G, num_generations=G,
                      steps_per_generation=2, gradient_accumulation_steps=2, max_completion_length=8, beta=0.0,
                      loss_type="dapo", scale_rewards="none", report_to=[], use_cpu=True, bf16=False,
                      learning_rate=1e-3, temperature=1.0, log_completions=False)
    tr = ActiveGRPOTrainer(model=build_tiny_model(tok, seed=0).float(), args=args, reward_funcs=[alternating],
                           train_dataset=Dataset.from_list(rows), processing_class=tok,
                           queue=PromptQueue(rows, seed=0, skip_solved_rate=2.0), prompt_rows=rows, active=False,
                           solve_threshold=1.0)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 2
    batch = tr._generate_and_score_completions([{}] * 8)
    lens = torch.tensor([1, 8, 2, 5, 3, 4, 8, 1])
    width = batch["completion_mask"].size(1)
    batch["completion_mask"] = (torch.arange(width)[None] < lens[:, None]).long()
    batch["num_items_in_batch"] = batch["completion_mask"].sum()

    def step(micros):
        tr.model.zero_grad()
        total = sum(tr.compute_loss(tr.model, m) for m in micros)
        total.backward()
        return total.item(), torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
    shuffled = split_tensor_dict(batch, 2)
    regrouped = regroup_by_length(shuffled, 2)
    loss_a, grad_a = step(shuffled)
    loss_b, grad_b = step(regrouped)
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-5, atol=1e-7)
    cut = [int(m["completion_mask"].sum(1).max()) for m in regrouped]
    assert cut == [8, 3] and [int(m["completion_mask"].sum(1).max()) for m in shuffled] == [8, 8]
    # in the stage: the buffered micro-batches of a fresh generation batch come sorted
    tr._step, tr._buffered_inputs = 0, None
    tr._prepare_inputs([{}] * 8)
    lengths = [m["completion_mask"].sum(1).tolist() for m in tr._buffered_inputs]
    flat = lengths[0] + lengths[1]
    assert flat == sorted(flat, reverse=True)
