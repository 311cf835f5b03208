"""DPO: the loss by hand, TRL's loss against an independent forward, the reference cache, bad pairs."""

import math

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig

from trl.trainer.utils import hash_module as weights_hash  # what CachedRefDPOTrainer keys its cache by

from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
from posttrain.stages.dpo import CachedRefDPOTrainer, clean_pairs, ref_cache_key
from posttrain.stages.losses import dpo_loss


def pair(q, good, bad):
    return {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}]}


PAIRS = [pair("1+2?", "<think>1+2=3</think>3", "<think>1+2=4</think>4"),
         pair("5+5?", "<think>5+5=10</think>The answer is 10.", "<think>5+5=11</think>11"),
         pair("7-2?", "<think>7-2=5</think>5", "<think>7-2=6</think>The answer is 6.")]


def test_dpo_norm_by_hand_on_two_pairs():
    pc, pr = torch.tensor([-10.0, -6.0]), torch.tensor([-12.0, -5.0])
    rc, rr = torch.tensor([-11.0, -6.0]), torch.tensor([-11.0, -6.0])
    lc, lr = torch.tensor([5.0, 2.0]), torch.tensor([4.0, 3.0])
    out = dpo_loss(pc, pr, rc, rr, beta=5.0, loss_type="dpo_norm", chosen_len=lc, rejected_len=lr)
    # pair 1: (1/5) - (-1/4) = 0.45 -> -log sigmoid(2.25); pair 2: 0 - (1/3) -> -log sigmoid(-5/3)
    expect = [math.log(1 + math.exp(-2.25)), math.log(1 + math.exp(5 / 3))]
    assert out["loss"].tolist() == pytest.approx(expect, abs=1e-6)
    plain = dpo_loss(pc, pr, rc, rr, beta=5.0, loss_type="dpo")["loss"]  # log-ratios 1-(-1)=2 and 0-1=-1
    assert plain.tolist() == pytest.approx([math.log(1 + math.exp(-10)), math.log(1 + math.exp(5))], abs=1e-6)


def make_trainer(tmp_path, model, tok, cache=None, loss="sigmoid_norm", sft_weight=0.0):
    extra = {"loss_type": [loss, "sft"], "loss_weights": [1.0, sft_weight]} if sft_weight else {"loss_type": [loss]}
    args = DPOConfig(output_dir=str(tmp_path / "t"), per_device_train_batch_size=3, **extra, beta=5.0,
                     max_length=64, precompute_ref_log_probs=True, report_to=[], use_cpu=True, bf16=False,
                     gradient_checkpointing=False, dataset_num_proc=None, learning_rate=1e-3)
    return CachedRefDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tok,
                               ref_cache=cache or {})


def completion_logps(model, tok, rows, key):
    """Sum of completion-token logprobs by a plain forward, independent of TRL."""
    out = []
    for r in rows:
        prompt = tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False)
        full = tok.apply_chat_template(r["prompt"] + r[key], tokenize=True, return_dict=False)
        n = next(i for i, (a, b) in enumerate(zip(prompt + [None], full)) if a != b)
        ids = torch.tensor([full])
        with torch.no_grad():
            lp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        tgt = ids[0, 1:]
        out.append(lp[torch.arange(len(tgt)), tgt][n - 1:].sum().item())
    return torch.tensor(out)


@pytest.fixture
def tiny():
    tok = build_tiny_tokenizer("olmo-think")
    return build_tiny_model(tok, seed=0), tok


def test_loss_is_ln2_when_policy_equals_reference(tiny, tmp_path):
    model, tok = tiny
    tr = make_trainer(tmp_path, model, tok)
    batch = tr._prepare_inputs(next(iter(tr.get_train_dataloader())))
    loss = tr.compute_loss(tr.model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_cached_ref_logps_equal_a_live_forward_and_trl_loss_matches_ours(tiny, tmp_path):
    model, tok = tiny
    cache = {"train": tmp_path / "ref.pt"}
    tr = make_trainer(tmp_path, model, tok, cache)
    live_c, live_r = completion_logps(model, tok, PAIRS, "chosen"), completion_logps(model, tok, PAIRS, "rejected")
    assert torch.tensor(tr.train_dataset["ref_chosen_logps"]) == pytest.approx(live_c, abs=1e-4)
    assert torch.tensor(tr.train_dataset["ref_rejected_logps"]) == pytest.approx(live_r, abs=1e-4)
    assert cache["train"].is_file()

    with torch.no_grad():  # move the policy away from the reference
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    batch = tr._prepare_inputs(next(iter(tr.get_train_dataloader())))
    trl_loss = tr.compute_loss(tr.model, batch).item()
    # the dataloader shuffles: put our per-pair values in the batch's order
    order = [int((live_c - v).abs().argmin()) for v in batch["ref_chosen_logps"].tolist()]
    pc, pr = completion_logps(model, tok, PAIRS, "chosen")[order], completion_logps(model, tok, PAIRS, "rejected")[order]
    lens = batch["completion_mask"].sum(1).float().chunk(2)
    ours = dpo_loss(pc, pr, live_c[order], live_r[order], 5.0, "dpo_norm", lens[0], lens[1])["loss"].mean().item()
    assert trl_loss == pytest.approx(ours, abs=1e-4)


def test_cache_hit_skips_the_reference_forward(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    seen = []
    cache = {"train": lambda h: seen.append(h) or tmp_path / f"ref-{h[:8]}.pt"}  # keyed by TRL's weights hash
    first = make_trainer(tmp_path, model, tok, cache).train_dataset["ref_chosen_logps"]
    assert seen == [weights_hash(model)] and (tmp_path / f"ref-{seen[0][:8]}.pt").is_file()
    monkeypatch.setattr(CachedRefDPOTrainer, "_reference_logps", lambda *a, **k: pytest.fail("recomputed"))
    assert make_trainer(tmp_path, model, tok, cache).train_dataset["ref_chosen_logps"] == first


def test_cache_key_changes_with_each_input(tiny):
    model, _ = tiny
    base = dict(ref_hash=weights_hash(model), data_sha="d", template="t", max_length=64)
    k = ref_cache_key(**base)
    for field, value in (("ref_hash", "other"), ("data_sha", "e"), ("template", "u"), ("max_length", 65),
                         ("autocast", "bf16")):
        assert ref_cache_key(**{**base, field: value}) != k, field
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert weights_hash(model) != base["ref_hash"]


def test_bad_pairs_are_counted_and_dropped_or_truncated(tiny):
    _, tok = tiny
    rows = PAIRS + [pair("a", "same", "same"), pair("b", "", "x"), pair("c", "x" * 300, "y")]
    kept, counts = clean_pairs(rows, tok, max_length=128, overlong="drop")
    assert len(kept) == 3 and counts == {"identical": 1, "empty": 1, "overlong_dropped": 1, "overlong_truncated": 0}
    kept, counts = clean_pairs(rows, tok, max_length=128, overlong="truncate")
    assert len(kept) == 4 and counts["overlong_truncated"] == 1


@pytest.mark.parametrize("sft_weight", [0.0, 2.0])
def test_packed_pairs_match_padded_pairs(tmp_path, sft_weight):
    """Reference logprobs, loss and every gradient: packed pairs equal TRL's padded pairs, with and
    without the NLL term on the chosen answers (TRL's "sft" loss; posttrain's own on packed rows)."""
    from posttrain.model.packing import enable_exact_packing
    tok = build_tiny_tokenizer("olmo-think")
    padded_model, packed_model = build_tiny_model(tok, seed=1), build_tiny_model(tok, seed=1)
    enable_exact_packing(packed_model)
    padded = make_trainer(tmp_path / "a", padded_model, tok, sft_weight=sft_weight)
    args = padded.args
    packed = CachedRefDPOTrainer(model=packed_model, args=args, train_dataset=Dataset.from_list(PAIRS),
                                 processing_class=tok, ref_cache={}, packed=True, loss_type="dpo_norm",
                                 pairs_per_row=len(PAIRS),  # sum / 3 pairs = the padded batch's mean
                                 sft_weight=sft_weight)
    for k in ("ref_chosen_logps", "ref_rejected_logps"):
        assert torch.tensor(packed.train_dataset[k]) == pytest.approx(torch.tensor(padded.train_dataset[k]), abs=1e-4)
    with torch.no_grad():  # same perturbation of both policies away from their reference
        g = torch.Generator().manual_seed(0)
        for p, q in zip(padded_model.parameters(), packed_model.parameters()):
            d = torch.randn(p.shape, generator=g) * 0.02
            p.add_(d)
            q.add_(d)
    losses = []
    for tr in (padded, packed):  # the same three pairs through each trainer's own collator
        batch = tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(len(PAIRS))]))
        loss = tr.compute_loss(tr.model, batch)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    for (n, p), q in zip(padded_model.named_parameters(), packed_model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), n


def test_packed_reference_runs_in_the_policys_mixed_precision(tmp_path):
    """An fp32 model trained with bf16 autocast: the precomputed reference must be the step-0 policy under
    the same autocast (as TRL's padded path does it), or every log-ratio starts away from 0."""
    from posttrain.model.packing import enable_exact_packing
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok, seed=1)
    enable_exact_packing(model)
    args = DPOConfig(output_dir=str(tmp_path / "t"), per_device_train_batch_size=3, loss_type=["sigmoid_norm"],
                     max_length=64, precompute_ref_log_probs=True, report_to=[], use_cpu=True, bf16=True,
                     dataset_num_proc=None)
    tr = CachedRefDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tok,
                             ref_cache={}, packed=True)
    batch = tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(len(PAIRS))]))
    with torch.no_grad():
        fp32, _ = tr._packed_logps(tr.model, batch)
        with tr.accelerator.autocast():
            mixed, _ = tr._packed_logps(tr.model, batch)
    ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
    assert (mixed - fp32).abs().max() > 1e-3  # bf16 autocast does change them: the check below can fail
    assert torch.allclose(ref.to(mixed), mixed, atol=1e-6, rtol=0)


def test_packed_rows_hold_as_many_pairs_as_fit(tmp_path):
    """Every pair trained once per epoch, rows within max_length, several pairs a row."""
    tok = build_tiny_tokenizer("olmo-think")
    rows = [pair(f"{a}+{b}?", f"<think>{a}+{b}={a + b}</think>{a + b}", f"<think>{a}+{b}={a + b + 1}</think>x")
            for a in range(4) for b in range(5)]
    args = DPOConfig(output_dir=str(tmp_path / "t"), per_device_train_batch_size=2, loss_type=["sigmoid_norm"],
                     max_length=256, precompute_ref_log_probs=True, report_to=[], use_cpu=True,
                     dataset_num_proc=None)
    from posttrain.model.packing import enable_exact_packing
    model = build_tiny_model(tok)
    enable_exact_packing(model)
    tr = CachedRefDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok, ref_cache={}, packed=True)
    seen, real = [], []
    for batch in tr.get_train_dataloader():
        n = len(batch["ref_chosen_logps"])
        seen += batch["ref_chosen_logps"].tolist()
        real.append(int((batch["seq_idx"] >= 0).sum()) if "seq_idx" in batch else None)
        assert batch["input_ids"].shape[-1] == 256 and n >= 1
    assert sorted(seen) == sorted(tr.train_dataset["ref_chosen_logps"])
    assert len(seen) / len(real) >= 2  # ~60-token pairs: 3-4 fit a 256-token row


def test_policy_rejections_replace_only_wrong_samples(monkeypatch):
    import posttrain.rollout.hf as hf
    from posttrain.stages.dpo import policy_rejections
    rows = [dict(pair(q, f"<think>{q}</think>The answer is {a}.", "given"), ground_truth=a)
            for q, a in (("1+2?", "3"), ("5+5?", "10"), ("7-2?", "5"))]
    samples = ["<think>1+2=3</think>The answer is 3.", "<think>5+5=11</think>The answer is 11.", ""]
    monkeypatch.setattr(hf, "generate", lambda *a, **k: samples)
    tok = build_tiny_tokenizer("olmo-think")
    out, replaced = policy_rejections(None, tok, rows, max_new_tokens=8, seed=0)
    assert replaced == 1
    assert [r["rejected"][0]["content"] for r in out] == ["given", samples[1], "given"]


def test_sft_weight_off_keeps_stage_keys_and_is_checked():
    from posttrain.recipe import RecipeError, load_recipe, weight_settings
    base, on = load_recipe("tiny", ["stages.dpo.sft_weight=0.0"]), load_recipe("tiny", ["stages.dpo.sft_weight=1.5"])
    assert "sft_weight" not in weight_settings(base.stages["dpo"])  # runs finished before the field: same key
    assert weight_settings(on.stages["dpo"])["sft_weight"] == 1.5
    with pytest.raises(RecipeError, match="sft_weight"):
        load_recipe("tiny", ["stages.dpo.sft_weight=-1"])
