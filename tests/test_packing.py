"""Packed batches must give each document exactly what it gets when run alone (CPU, fp32)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

from posttrain.data.packing import (
    IGNORE_INDEX, PackedCollator, best_fit_decreasing, pack_sequences, packed_sequence_logps,
)
from posttrain.model import kernels
from posttrain.model.packing import PackedGatedDeltaNet, enable_exact_packing

# Shorter than the conv kernel (1, 2, 3), longer than a GDN chunk (70 > 64), and in between.
LENGTHS = [40, 1, 2, 3, 70, 17]


def tiny_config(**kw) -> OlmoHybridConfig:
    base = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, linear_num_key_heads=4,
                linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=32,
                pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return OlmoHybridConfig(**{**base, **kw})


def build(seed: int = 0) -> OlmoHybridForCausalLM:
    torch.manual_seed(seed)
    return OlmoHybridForCausalLM(tiny_config()).float()


@pytest.fixture(scope="module")
def docs():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(2, 64, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matmuls: with 2 OpenMP threads on a busy 2-core box a forward took 1.1 s, with 1 13 ms.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def alone_logits(model, docs):
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([d]), use_cache=False).logits for d in docs], dim=1)


def test_stock_model_leaks_on_packed_rows(docs):
    """What TRL's padding-free collator gives the stock model (position_ids only) is wrong,
    so the parity tests below can fail."""
    model = build().eval()
    batch = pack_sequences(docs)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    assert (packed - alone_logits(model, docs)).abs().max() > 1e-2


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_packed_forward_matches_each_document_alone(docs, attention):
    model = build().eval()
    ref = alone_logits(model, docs)
    report = enable_exact_packing(model, attention=attention)
    assert report["gdn"] == kernels.TORCH_PER_DOC and report["conv"] == kernels.TORCH_PER_DOC
    with torch.no_grad():
        packed = model(**pack_sequences(docs)).logits
    torch.testing.assert_close(packed, ref, atol=1e-4, rtol=0)


def test_packed_gradients_match_sum_of_documents(docs):
    model = build().train()
    alone = copy.deepcopy(model)
    enable_exact_packing(model)

    batch = pack_sequences(docs)
    labels = batch.pop("labels")
    logits = model(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX,
                                             reduction="sum")
    loss.backward()

    ref_loss = 0.0
    for d in docs:
        ids = torch.tensor([d])
        lg = alone(input_ids=ids, use_cache=False).logits
        ref_loss = ref_loss + torch.nn.functional.cross_entropy(lg[0, :-1], ids[0, 1:], reduction="sum")
    ref_loss.backward()

    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-6)
    grads = {n: p.grad for n, p in alone.named_parameters()}
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        torch.testing.assert_close(p.grad, grads[n], atol=1e-4, rtol=1e-4, msg=n)


def test_multi_row_collator_batch_is_exact(docs):
    model = build().eval()
    ref = alone_logits(model, docs)[0]
    enable_exact_packing(model)
    batch = PackedCollator(max_length=72, return_spans=True)([{"input_ids": d} for d in docs])
    assert batch["input_ids"].shape[0] > 1
    spans = batch["spans"]
    with torch.no_grad():
        flat = model(**batch).logits.reshape(-1, ref.shape[-1])
    got = torch.cat([flat[a:b] for a, b in spans])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_unpacked_batches_and_generation_unchanged():
    model = build().eval()
    patched = copy.deepcopy(model)
    enable_exact_packing(patched)
    assert isinstance(patched.model.layers[0].linear_attn, PackedGatedDeltaNet)
    ids = torch.randint(2, 64, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding, as generation uses
    with torch.no_grad():
        torch.testing.assert_close(patched(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits, atol=0, rtol=0)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(patched.generate(ids, **kw), model.generate(ids, **kw))


def test_packed_logps_match_alone(docs):
    model = build().eval()
    enable_exact_packing(model)
    masks = [[0] * (len(d) // 2) + [1] * (len(d) - len(d) // 2) for d in docs]
    batch = pack_sequences(docs, loss_masks=masks)
    with torch.no_grad():
        sums, counts = packed_sequence_logps(model(**batch).logits, batch["labels"], batch["spans"])
        for i, (d, m) in enumerate(zip(docs, masks)):
            lg = model(input_ids=torch.tensor([d])).logits[0, :-1].log_softmax(-1)
            tok = lg.gather(-1, torch.tensor(d[1:]).unsqueeze(-1)).squeeze(-1)
            keep = torch.tensor(m[1:], dtype=torch.bool)
            torch.testing.assert_close(sums[i], tok[keep].sum(), atol=1e-4, rtol=1e-5)
            assert counts[i] == keep.sum()


def test_fla_requested_without_cuda_is_an_error():
    with pytest.raises(RuntimeError, match="CUDA"):
        enable_exact_packing(build(), backend="fla")


# --- data side ---------------------------------------------------------------------------

def test_best_fit_decreasing_places_every_index_once_within_max_len():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 300, (500,), generator=g).tolist()
    rows = best_fit_decreasing(lengths, 512)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 512 for r in rows)
    assert rows == best_fit_decreasing(list(lengths), 512)
    # Best fit should be near the volume bound, not one item per row.
    assert len(rows) <= -(-sum(lengths) // 512) + 2
    with pytest.raises(ValueError):
        best_fit_decreasing([513], 512)


def test_best_fit_decreasing_hand_example():
    # 6 -> row 0 (4 left), 5 -> row 1 (5 left), 4 -> row 0 (the tighter fit), 3 -> row 1
    assert best_fit_decreasing([6, 5, 4, 3], 10) == [[0, 2], [1, 3]]


def test_collator_labels_positions_and_boundaries():
    examples = [
        {"input_ids": [5, 6, 7, 8], "assistant_masks": [0, 0, 1, 1]},
        {"input_ids": [9, 10, 11]},
        {"input_ids": [12, 13], "completion_mask": [1, 1], "labels": [20, 21]},
    ]
    b = PackedCollator(max_length=16, pad_token_id=0)(examples)
    assert b["input_ids"].shape == (1, 9)  # one row, no padding
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert b["labels"].tolist() == [[-100, -100, 7, 8, -100, 10, 11, -100, 21]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]
    assert b["cu_seq_lens_q"].tolist() == [0, 4, 7, 9] and b["cu_seq_lens_q"].dtype == torch.int32
    assert torch.equal(b["cu_seq_lens_k"], b["cu_seq_lens_q"])
    assert b["max_length_q"] == b["max_length_k"] == 4
    assert b["seq_idx"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2]] and b["seq_idx"].dtype == torch.int32
    assert b["num_real_tokens"] == 9


def test_collator_pads_rows_as_their_own_segment_and_truncates():
    examples = [{"input_ids": list(range(2, 11))}, {"input_ids": [3, 4]}, {"input_ids": list(range(2, 30))}]
    b = PackedCollator(max_length=12, pad_token_id=0, return_spans=True)(examples)
    # 28 tokens truncate to 12 and fill row 0; row 1 holds 9 + 2 and one pad token.
    assert b["input_ids"].shape == (2, 12)
    assert b["num_real_tokens"] == 23
    assert b["cu_seq_lens_q"].tolist() == [0, 12, 21, 23, 24]
    assert b["spans"] == [(12, 21), (21, 23), (0, 12)]
    assert b["seq_idx"].reshape(-1).tolist()[-2:] == [2, 3]
    assert b["input_ids"][1, -1] == 0 and b["labels"][1, -1] == IGNORE_INDEX
    assert b["position_ids"][1].tolist() == list(range(9)) + [0, 1, 0]
    # pad_to_multiple_of rounds a single row up, too
    b = PackedCollator(max_length=64, pad_to_multiple_of=8)([{"input_ids": [3, 4, 5]}])
    assert b["input_ids"].shape == (1, 8) and b["cu_seq_lens_q"].tolist() == [0, 3, 8]


def test_packed_row_batches_reshuffle_each_epoch_under_accelerate_sharding():
    """Several processes: accelerate wraps the batch sampler; set_epoch must still reach it."""
    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard

    from posttrain.data.packing import PackedRowBatches
    lengths = [(i * 37) % 50 + 5 for i in range(200)]
    rows = PackedRowBatches(lengths, max_len=64, seed=1)
    for world in (1, 2):
        sampler = rows if world == 1 else BatchSamplerShard(rows, num_processes=world, process_index=0)
        loader = DataLoaderShard(list(range(200)), batch_sampler=sampler)
        loader.set_epoch(0)
        first = [b.tolist() for b in loader]
        loader.set_epoch(1)
        second = [b.tolist() for b in loader]
        assert first != second, world
        if world == 1:  # every item once per epoch, rows within max_len
            assert sorted(i for b in second for i in b) == list(range(200))
            assert all(sum(lengths[i] for i in b) <= 64 for b in second)


def test_host_copy_of_boundaries_decides_them_and_a_stale_one_is_ignored(docs):
    """The model takes document boundaries from the collators' `cu_seq_lens_host` (no device-to-host
    copy); one of another length than cu_seq_lens_q is not trusted."""
    model = build()
    enable_exact_packing(model)
    batch = pack_sequences(docs[:2])  # 40 + 1 tokens
    assert batch["cu_seq_lens_host"] == (0, 40, 41) == tuple(batch["cu_seq_lens_q"].tolist())
    run = lambda b: model(**{k: v for k, v in b.items() if k != "labels"}, use_cache=False).logits  # noqa: E731
    with torch.no_grad():
        right = run(batch)
        moved = run({**batch, "cu_seq_lens_host": (0, 20, 41)})  # boundary at 20: a different model input
        stale = run({**batch, "cu_seq_lens_host": (0, 41)})
    assert not torch.allclose(right, moved)
    torch.testing.assert_close(stale, right, rtol=0, atol=0)
    torch.testing.assert_close(right, alone_logits(model, docs[:2]), rtol=1e-4, atol=1e-4)


def test_every_packed_batch_carries_its_boundaries_as_ints(docs):
    from posttrain.data.packing import pad_packed_row

    for b in (PackedCollator(max_length=64)([{"input_ids": d} for d in docs]),
              pad_packed_row(pack_sequences(docs[:3]), 8, 0), pad_packed_row(pack_sequences(docs[:1]), 8, 0)):
        assert b["cu_seq_lens_host"] == tuple(b["cu_seq_lens_q"].tolist())
        assert all(type(x) is int for x in b["cu_seq_lens_host"])
