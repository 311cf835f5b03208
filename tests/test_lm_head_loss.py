"""The LM head + loss over packed rows without full logits: TRL's fused LM head (trl.trainer.utils.
add_fused_lm_head, which SFTTrainer, DPOTrainer and GRPOTrainer put on the policy) against the stock
logits path, values and gradients, on CPU in fp32 (TRL's torch tiles here; its Triton kernel on CUDA:
tests/gpu/test_lm_head_loss_gpu.py). The DPO stage's packed log-probs go through the same head."""

from __future__ import annotations

import copy

import pytest
import torch
from test_packing import build
from trl.trainer.utils import add_fused_lm_head

from posttrain.data.packing import IGNORE_INDEX, document_logps, pack_sequences, packed_sequence_logps
from posttrain.model.packing import enable_exact_packing
from posttrain.stages.dpo import CachedRefDPOTrainer

LENGTHS = [40, 1, 3, 70, 17]
MODEL_KEYS = ("input_ids", "position_ids", "seq_idx", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
              "max_length_k")


@pytest.fixture
def models():
    stock = build(seed=3).train()
    enable_exact_packing(stock)
    fused = copy.deepcopy(stock)
    add_fused_lm_head(fused)
    return stock, fused


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(2, 64, (n,), generator=g).tolist() for n in LENGTHS]
    masks = [[0] * (len(d) // 3) + [1] * (len(d) - len(d) // 3) for d in docs]  # a prompt, then a completion
    return pack_sequences(docs, loss_masks=masks)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(a: dict, b: dict):
    assert a.keys() == b.keys() and "lm_head.weight" in a
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-6, rtol=1e-4, msg=n)


def test_sft_loss_through_the_fused_head_matches_the_stock_loss(models, batch):
    stock, fused = models
    inputs = {k: batch[k] for k in (*MODEL_KEYS, "labels")}
    want = stock(**inputs, use_cache=False).loss  # transformers' own shifted mean cross-entropy
    want.backward()
    got = fused(**inputs, use_cache=False, fused_lm_head=True)
    assert getattr(got, "logits", None) is None  # no [R, T, V] logits come back
    got.loss.backward()
    torch.testing.assert_close(got.loss, want, atol=1e-6, rtol=1e-5)
    assert_same_grads(grads(fused), grads(stock))


def test_dpo_stage_packed_logps_match_the_full_logits_path(models, batch):
    stock, fused = models
    keep = {k: batch[k] for k in MODEL_KEYS}
    want_sums, want_counts = packed_sequence_logps(stock(**keep, use_cache=False).logits, batch["labels"],
                                                   batch["spans"])
    # The stage's own method (self is unused): model call through the fused head, then per-document sums.
    sums, counts = CachedRefDPOTrainer._packed_logps(None, fused, batch)
    torch.testing.assert_close(sums, want_sums, atol=1e-5, rtol=1e-5)
    assert torch.equal(counts, want_counts) and counts.sum() > 0
    w = torch.randn(len(batch["spans"]), generator=torch.Generator().manual_seed(1))  # any downstream loss
    (w * want_sums).sum().backward()
    (w * sums).sum().backward()
    assert_same_grads(grads(fused), grads(stock))


def test_document_logps_ignores_prompt_tokens_and_row_ends():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7],
                           [IGNORE_INDEX, 8, 9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    lp = torch.tensor([[-9.0, -1.0, -2.0, 0.0, -3.0],    # position t scores label t+1
                       [-1.0, -1.0, 0.0, 0.0, 0.0]])
    sums, counts = document_logps(lp, labels, [(0, 4), (4, 6), (6, 9), (9, 12)])
    assert sums.tolist() == [-3.0, -3.0, -2.0, 0.0]
    assert counts.tolist() == [2.0, 1.0, 2.0, 0.0]


def test_stage_trainers_score_through_the_fused_head():
    """The stages rely on TRL for SFT's loss and GRPO's log-probs: a TRL upgrade that drops the head, or a
    stage override of the scoring method, would bring the full fp32 logits back."""
    import inspect

    from trl import DPOTrainer, GRPOTrainer, SFTTrainer

    from posttrain.stages.rl import ActiveGRPOTrainer
    from posttrain.stages.sft import FixedRowSFTTrainer
    for cls in (SFTTrainer, GRPOTrainer, DPOTrainer):
        assert "add_fused_lm_head(" in inspect.getsource(cls.__init__), cls.__name__
    assert "fused_lm_head=True" in inspect.getsource(GRPOTrainer._get_per_token_logps_and_entropies)
    assert "fused_lm_head=True" in inspect.getsource(SFTTrainer.compute_loss)
    # GRPO's override only cuts each chunk to its width (stages/rl_trim.py) and scores through TRL's
    own = inspect.getsource(ActiveGRPOTrainer._get_per_token_logps_and_entropies)
    assert "super()._get_per_token_logps_and_entropies" in own and "lm_head" not in own and "log_softmax" not in own
    assert FixedRowSFTTrainer.compute_loss is not SFTTrainer.compute_loss  # it wraps, calling super()
    assert "super().compute_loss" in inspect.getsource(FixedRowSFTTrainer.compute_loss)


def test_grpo_logps_and_entropy_through_the_stage_trainer_at_a_temperature(tmp_path):
    """ActiveGRPOTrainer's scoring (TRL's head at the sampling temperature, each chunk cut to its width)
    against log_softmax(logits / T) of a plain forward: values, entropy and gradients."""
    from datasets import Dataset
    from trl import GRPOConfig

    from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
    from posttrain.rollout.sampler import PromptQueue
    from posttrain.stages.rl import ActiveGRPOTrainer
    tok, T, P, C = build_tiny_tokenizer("olmo-think"), 0.7, 5, 12
    rows = [{"prompt": [{"role": "user", "content": f"q {i}"}]} for i in range(4)]
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=C, beta=0.0, report_to=[], use_cpu=True, bf16=False,
                      temperature=T, log_completions=False)
    model = build_tiny_model(tok, seed=0).float()
    stock = copy.deepcopy(model)  # before the trainer puts its head on: the plain logits path
    tr = ActiveGRPOTrainer(model=model, args=args, reward_funcs=[lambda **k: [0.0]],
                           train_dataset=Dataset.from_list(rows), processing_class=tok,
                           queue=PromptQueue(rows, seed=0, skip_solved_rate=2.0), prompt_rows=rows, active=False,
                           solve_threshold=1.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, stock.config.vocab_size, (4, P + C), generator=g)
    mask = torch.zeros_like(ids)
    for r, (p, c) in enumerate([(5, 12), (3, 4), (4, 9), (2, 1)]):
        mask[r, P - p:P + c] = 1  # prompts left-padded, completions right-padded
    ids = ids * mask
    got, ent = tr._get_per_token_logps_and_entropies(tr.model, ids, mask, C, batch_size=2, compute_entropy=True)[:2]
    lsm = torch.log_softmax(stock(input_ids=ids, attention_mask=mask).logits[:, P - 1:-1].float() / T, -1)
    want, want_ent = lsm.gather(-1, ids[:, P:, None]).squeeze(-1), -(lsm.exp() * lsm).sum(-1)
    cm = mask[:, P:].bool()
    torch.testing.assert_close(got[cm], want[cm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[cm], want_ent[cm], rtol=1e-5, atol=1e-5)
    w = torch.randn(got.shape, generator=g)
    (got * cm * w).sum().backward()
    (want * cm * w).sum().backward()
    for (n, p), q in zip(tr.model.named_parameters(), stock.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), n


def test_sft_stage_loss_on_a_packed_fixed_row_equals_plain_cross_entropy(tmp_path):
    """FixedRowSFTTrainer.compute_loss (TRL's head over a packed row padded to its multiple) against a
    plain forward's mean cross-entropy over the assistant tokens: value and gradients."""
    from datasets import Dataset
    from trl import SFTConfig

    from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
    from posttrain.stages.sft import FixedRowSFTTrainer
    tok = build_tiny_tokenizer("olmo-think")
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("1+1?", "<think>1+1=2</think>2"), ("x", "y"), ("9-3?", "<think>9-3=6</think>6")]]
    model = build_tiny_model(tok, seed=3).float()
    enable_exact_packing(model)
    stock = copy.deepcopy(model)  # before the trainer puts its head on
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, max_length=128, assistant_only_loss=True,
                     packing=True, packing_strategy="bfd", padding_free=True, report_to=[], use_cpu=True, bf16=False,
                     gradient_checkpointing=False, dataset_num_proc=None)
    tr = FixedRowSFTTrainer(model=model, args=args, processing_class=tok, row_multiple=128,
                            train_dataset=Dataset.from_list([{"messages": c} for c in convs]))
    batch = next(iter(tr.get_train_dataloader()))
    assert batch["input_ids"].shape[1] == 128 and batch["num_pad_tokens"] > 0
    tr.model.train()
    loss = tr.compute_loss(tr.model, dict(batch))
    kw = {k: v for k, v in batch.items() if k in MODEL_KEYS}
    logits = stock(**kw).logits[0, :-1].float()
    tgt = batch["labels"][0, 1:]
    want = torch.nn.functional.cross_entropy(logits, tgt, ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    want.backward()
    for (n, p), q in zip(model.named_parameters(), stock.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), n
