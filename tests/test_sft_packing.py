"""SFT packing through TRL's own BFD packing + padding-free collator, made exact by our model patch."""

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from posttrain.model.packing import enable_exact_packing
from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer

CONVS = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
         for q, a in [("1+1?", "<think>1+1=2</think>2"), ("Ana has 12 pens, buys 30. How many now?",
                      "<think>12+30=42.</think>The answer is 42."), ("x", "y"), ("9-3?", "<think>9-3=6</think>6")]]


def trainer(tmp_path, model, tok, packing):
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4 if not packing else 1, max_length=256,
                     assistant_only_loss=True, packing=packing, packing_strategy="bfd", padding_free=packing,
                     report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, dataset_num_proc=None)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"messages": c} for c in CONVS]),
                      processing_class=tok)


def test_packed_rows_give_the_padded_loss_and_gradients(tmp_path):
    tok = build_tiny_tokenizer("olmo-think")
    padded_model, packed_model = build_tiny_model(tok, seed=2), build_tiny_model(tok, seed=2)
    enable_exact_packing(packed_model)
    pad_tr, pack_tr = trainer(tmp_path / "a", padded_model, tok, False), trainer(tmp_path / "b", packed_model, tok, True)
    pad_batch = next(iter(pad_tr.get_train_dataloader()))
    pack_batch = next(iter(pack_tr.get_train_dataloader()))
    assert pack_batch["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in pack_batch  # one packed row
    assert len(pack_batch["cu_seq_lens_q"]) == len(CONVS) + 1
    # Sum of token losses over the same targets: equal when packing is exact.
    sums = []
    for model, batch in ((padded_model, pad_batch), (packed_model, pack_batch)):
        kw = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**kw).logits[:, :-1]
        tgt = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        loss.backward()
        sums.append(loss.item())
    assert int((pad_batch["labels"] != -100).sum()) == int((pack_batch["labels"] != -100).sum())
    assert sums[1] == pytest.approx(sums[0], rel=1e-5)
    for (n, p), q in zip(padded_model.named_parameters(), packed_model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), n


def test_fixed_length_rows_keep_the_loss_and_count_real_tokens(tmp_path):
    """Rows padded to max_length (one shape for the GPU kernels): same loss and gradients as the
    unpadded row, and num_tokens still counts real tokens only."""
    from posttrain.stages.sft import FixedRowSFTTrainer
    tok = build_tiny_tokenizer("olmo-think")
    a, b = build_tiny_model(tok, seed=3), build_tiny_model(tok, seed=3)
    enable_exact_packing(a)
    enable_exact_packing(b)
    plain = trainer(tmp_path / "a", a, tok, True)
    fixed = FixedRowSFTTrainer(model=b, args=plain.args, processing_class=tok, row_multiple=256,
                               train_dataset=Dataset.from_list([{"messages": c} for c in CONVS]))
    rb, fb = next(iter(plain.get_train_dataloader())), next(iter(fixed.get_train_dataloader()))
    real = rb["input_ids"].shape[1]
    assert fb["input_ids"].shape[1] == 256 and fb["num_pad_tokens"] == 256 - real
    assert fb["cu_seq_lens_q"][:-1].tolist() == rb["cu_seq_lens_q"].tolist()
    losses = []
    for tr, batch in ((plain, rb), (fixed, fb)):
        tr.model.train()
        loss = tr.compute_loss(tr.model, dict(batch))
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), n
    assert fixed._total_train_tokens == plain._total_train_tokens == real
