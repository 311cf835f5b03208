"""DPO stage: TRL's DPOTrainer with length-normalized DPO and a disk cache of reference logprobs.

Why the cache: the reference model is the stage's starting point and never changes, so its
logprobs over the preference pairs are computed once, stored under the run
(`RUN/.cache/STAGE/ref-KEY.pt`, KEY = hash of the reference weights, the data-mix content,
the chat template and max_length), reused by reruns and resumes, and no reference model is
held in memory while training. Bad pairs (chosen == rejected, an empty completion) are
dropped and counted; pairs over max_length are truncated or dropped as `overlong` says.

setup (policy, pairs, cached reference logprobs) -> train -> cleanup (save, preference + task evals).
Run it through the pipeline: `posttrain run tiny --stage dpo`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from posttrain.data.mix import resolve_mix, rows_hash
from posttrain.metrics import ThroughputCallback
from posttrain.recipe import resolve_file
from posttrain.rundir import RunDir
from posttrain.launch import is_main_process, world_size
from posttrain.recipe import DPOStage
from posttrain.stages.common import StageContext, finish, load_stage_model, training_args, warn_geometry
from posttrain.stages.registry import Geometry, accumulation
from posttrain.stages.losses import TRL_LOSS

log = logging.getLogger("posttrain")


def clean_pairs(rows: list[dict], tokenizer, max_length: int, overlong: str = "truncate",
                lengths: list[int] | None = None) -> tuple[list[dict], dict]:
    """Drop pairs DPO cannot learn from; count each reason (logged and kept in the metrics).

    `lengths`, when given, receives each kept pair's packed size: both sequences, truncated."""
    kept, counts = [], {"identical": 0, "empty": 0, "overlong_dropped": 0, "overlong_truncated": 0}
    for r in rows:
        # An answer may be a tool call with no text (AI2's format): its calls count as its content.
        chosen, rejected = ((m[-1].get("content") or "") + (m[-1].get("function_calls") or "")
                            for m in (r["chosen"], r["rejected"]))
        if not chosen.strip() or not rejected.strip():
            counts["empty"] += 1
            continue
        if chosen == rejected:
            counts["identical"] += 1
            continue
        sizes = [len(tokenizer.apply_chat_template(r["prompt"] + r[k], tokenize=True, return_dict=False))
                 for k in ("chosen", "rejected")]
        longest = max(sizes)
        if longest > max_length:
            if overlong == "drop":
                counts["overlong_dropped"] += 1
                continue
            counts["overlong_truncated"] += 1
        kept.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]})
        if lengths is not None:
            lengths.append(sum(min(n, max_length) for n in sizes))
    return kept, counts


def tokenize_pair(tok, row: dict) -> dict:
    """A pair's token ids as the model meets them at inference: the prompt rendered for generation
    (the Think template ends it with `<think>`) and tokenized alone, then each answer's text after
    it, tokenized alone. Tokenizing prompt + answer as one text, as TRL does, lets BPE merge across
    the boundary: with the Olmo tokenizer `<think>` ends in `>` alone but `<think>\n` in `>\n`, so
    the prompt would lose its last token to the answer. The prompt is rendered once, shared by both
    answers. An answer whose render does not continue the prompt's text falls back to TRL's split
    (the tokens after the common prefix)."""
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    prompt_text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = {k: tok.apply_chat_template(row["prompt"] + row[k], tokenize=False) for k in ("chosen", "rejected")}
    if all(t.startswith(prompt_text) for t in full.values()):
        return {"prompt_ids": enc(prompt_text), **{f"{k}_ids": enc(t[len(prompt_text):]) for k, t in full.items()}}
    from trl.data_utils import common_prefix_length
    prompt_ids, ids = enc(prompt_text), {k: enc(t) for k, t in full.items()}
    n = min(common_prefix_length(prompt_ids, v) for v in ids.values())
    return {"prompt_ids": prompt_ids[:n], **{f"{k}_ids": v[n:] for k, v in ids.items()}}


def policy_rejections(model, tok, rows: list[dict], max_new_tokens: int, seed: int, batch_size: int = 128):
    """Rows with `rejected` replaced by the model's own sampled answer wherever that answer is wrong.

    Sampling at temperature 1 from the starting policy, graded by `reward.math` against the row's
    ground_truth; a row whose sample is right keeps its given rejected answer. Returns the rows and
    how many were replaced.
    """
    import torch

    from posttrain.rollout.hf import generate
    from reward.math import math_reward
    from posttrain.data.templates import generation_prefix
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens,
                           batch_size=batch_size, temperature=1.0)
    scores = math_reward(samples, ground_truth=[r.get("ground_truth") for r in rows])
    prefix = generation_prefix(tok.chat_template or "")
    out, replaced = [], 0
    for r, text, score in zip(rows, samples, scores):
        if score == 0.0 and text.strip() and text != r["chosen"][-1]["content"]:
            # generate() returns the generation prefix too; the template adds it again when rendering.
            body = text if not prefix or text.startswith(prefix) else prefix + text
            r = {**r, "rejected": [{"role": "assistant", "content": body}]}
            replaced += 1
        out.append(r)
    return out, replaced


class PackedPairCollator:
    """Packs prompt+chosen and prompt+rejected of every pair in the batch into one row.

    Chosen sequences come first, then rejected, so per-document sums split into the two halves.
    TRL's own DPO padding-free is disabled upstream; this uses the exact-packing path instead.
    """

    def __init__(self, max_length: int, pad_token_id: int, pad_to_multiple_of: int | None = None):
        # Rows padded to a multiple keep the set of shapes small: on the GPU every new row length
        # recompiles fla's tilelang backward and the flex-attention kernel (~25 s each).
        self.max_length, self.pad, self.multiple = max_length, pad_token_id, pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict:
        from posttrain.data.packing import pack_sequences
        seqs, masks = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for ex in examples:
                ids = (ex["prompt_ids"] + ex[key])[: self.max_length]
                seqs.append(ids)
                masks.append(([0] * len(ex["prompt_ids"]) + [1] * len(ex[key]))[: self.max_length])
        n = sum(map(len, seqs))
        pad_to = -(-n // self.multiple) * self.multiple if self.multiple else None
        out = pack_sequences(seqs, masks, pad_token_id=self.pad, pad_to=pad_to)
        if "ref_chosen_logps" in examples[0]:
            out["ref_chosen_logps"] = torch.tensor([ex["ref_chosen_logps"] for ex in examples])
            out["ref_rejected_logps"] = torch.tensor([ex["ref_rejected_logps"] for ex in examples])
        return out


class CachedRefDPOTrainer(DPOTrainer):
    """DPOTrainer whose reference logprobs live in a file keyed by what determines them,
    optionally on packed pairs (exact document boundaries for GDN, conv and attention)."""

    def __init__(self, *a, ref_cache: dict[str, Path | Callable[[str], Path]], packed: bool = False, loss_type: str = "dpo_norm",
                 pairs_per_row: float = 1.0, sft_weight: float = 0.0, **kw):
        self._ref_cache = ref_cache  # dataset name ("train"/"eval") -> cache file, or weights hash -> cache file
        self._packed, self._loss_type, self._pairs_per_row = packed, loss_type, pairs_per_row
        self._sft_weight = sft_weight  # packed path; the unpacked one gets TRL's "sft" loss term
        self._tokens_seen = 0  # real (unpadded) tokens trained on, all processes: logged as num_tokens
        if packed:  # before super(): the reference precompute in __init__ already uses it
            kw["data_collator"] = PackedPairCollator(kw["args"].max_length, kw["processing_class"].pad_token_id,
                                                     pad_to_multiple_of=kw["args"].max_length)
        super().__init__(*a, **kw)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Pairs come tokenized (`tokenize_pair`); only TRL's drop of prompts that fill max_length remains."""
        if "prompt_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if args.max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
        return dataset

    def _pair_sizes(self, ds) -> list[int]:
        """Packed size of each pair: prompt + chosen and prompt + rejected, each truncated to max_length."""
        from posttrain.data.packing import list_lengths
        L = self.args.max_length
        p, c, r = (list_lengths(ds, k) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        return [min(a + b, L) + min(a + d, L) for a, b, d in zip(p, c, r)]

    def get_train_dataloader(self):
        """Packed: each micro-batch is one row holding as many pairs as fit max_length (PackedRowBatches)."""
        if not self._packed:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        from posttrain.data.packing import PackedRowBatches
        ds = self.train_dataset
        rows = PackedRowBatches(self._pair_sizes(ds), self.args.max_length, seed=self.args.seed)
        log.info("packed DPO: %d pairs in %d rows of %d tokens (%.2f pairs a row)", len(ds), len(rows),
                 self.args.max_length, rows.items_per_row)
        return self.accelerator.prepare(DataLoader(ds, batch_sampler=rows, collate_fn=self.data_collator,
                                                   num_workers=self.args.dataloader_num_workers))

    def _packed_logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence completion logprob sums and completion lengths, [2 x pairs].

        Through TRL's fused LM head (added to the policy by DPOTrainer.__init__, before the reference
        precompute): the 100K-vocabulary logits of a 16K row are never materialised, only each
        completion token's logprob, in tiles of 4,096 tokens x 32,768 vocabulary accumulated in fp32."""
        from posttrain.data.packing import document_logps
        keys = ("input_ids", "position_ids", "seq_idx", "cu_seq_lens_q", "cu_seq_lens_k", "cu_seq_lens_host",
                "max_length_q", "max_length_k")
        out = model(**{k: batch[k] for k in keys}, labels=batch["labels"], use_cache=False, fused_lm_head=True)
        return document_logps(out.log_probs, batch["labels"], batch["spans"])

    def compute_ref_log_probs(self, model, inputs):
        if not self._packed:
            return super().compute_ref_log_probs(model, inputs)
        from trl.models.utils import disable_gradient_checkpointing
        # as TRL's own: the precompute runs in __init__, before accelerate wraps the forward in the
        # training autocast, so without it an fp32 model trained in bf16 would have an fp32 reference
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              self.accelerator.autocast()):
            sums, _ = self._packed_logps(model, inputs)
        return sums.chunk(2)

    def _compute_loss(self, model, inputs, return_outputs):
        if not self._packed:
            return super()._compute_loss(model, inputs, return_outputs)
        from posttrain.stages.losses import dpo_loss
        sums, counts = self._packed_logps(model, inputs)
        (pc, pr), (lc, lr) = sums.chunk(2), counts.chunk(2)
        out = dpo_loss(pc, pr, inputs["ref_chosen_logps"].to(pc), inputs["ref_rejected_logps"].to(pc), self.beta,
                       self._loss_type, lc, lr)
        mode = "train" if model.training else "eval"
        if model.training:
            real = torch.as_tensor(inputs["num_real_tokens"], device=pc.device).reshape(1)
            self._tokens_seen += int(self.accelerator.gather(real).sum())
        cr, rr = out["chosen_reward"], out["rejected_reward"]
        for k, v in (("rewards/chosen", cr.mean()), ("rewards/rejected", rr.mean()),
                     ("rewards/accuracies", (cr > rr).float().mean()), ("rewards/margins", (cr - rr).mean()),
                     ("logps/chosen", pc.detach().mean()), ("logps/rejected", pr.detach().mean())):
            self._metrics[mode][k].append(self.accelerator.gather(v).mean().item())
        # Rows hold different numbers of pairs: summing and dividing by the run's mean count weighs every
        # pair the same across micro-batches, where a per-row mean would favour pairs in sparse rows.
        loss = out["loss"].sum() / self._pairs_per_row if model.training else out["loss"].mean()
        if self._sft_weight:  # TRL's "sft" term: mean NLL over the micro-batch's chosen tokens
            loss = loss + self._sft_weight * -(pc.sum() / lc.sum().clamp(min=1))
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict, *a, **kw) -> None:
        if self._packed and "loss" in logs:  # the throughput callback reads tokens/s from this
            logs["num_tokens"] = float(self._tokens_seen)
        super().log(logs, *a, **kw)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        path = self._ref_cache.get(name)
        if callable(path):  # keyed by the reference weights: TRL hashed them (hash_module) just before this
            path = path(self._precompute_model_hash)
        if path is not None and path.is_file():
            saved = torch.load(path)
            if len(saved["chosen"]) == len(dataset):
                log.info("reference logprobs for %s: cache hit %s", name, path)
                return dataset.add_column("ref_chosen_logps", saved["chosen"].tolist()).add_column(
                    "ref_rejected_logps", saved["rejected"].tolist())
        chosen, rejected = self._reference_logps(dataset, batch_size)
        if path is not None and is_main_process():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"chosen": chosen, "rejected": rejected}, tmp)
            tmp.replace(path)
            log.info("reference logprobs for %s: computed and cached at %s", name, path)
        return dataset.add_column("ref_chosen_logps", chosen.tolist()).add_column("ref_rejected_logps",
                                                                                rejected.tolist())

    def _reference_logps(self, dataset: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference forward over every pair, rows dealt out to the processes, results gathered to all.

        Not TRL's precompute: it hands results between processes through a datasets cache file, which for
        an in-memory dataset lives in each process's own temp dir (rank 1 fails, FileNotFoundError), and it
        packs a fixed count of pairs a row. Every process runs the same number of forwards (the last ones
        repeat a row and are discarded): under ZeRO-3 each forward gathers weights from all of them.
        """
        from accelerate.utils import gather_object
        from trl.models import prepare_deepspeed

        from posttrain.data.packing import PackedRowBatches
        acc, n = self.accelerator, len(dataset)
        if self._packed:
            rows = PackedRowBatches(self._pair_sizes(dataset), self.args.max_length, seed=self.args.seed).rows
        else:
            rows = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        mine = rows[acc.process_index::acc.num_processes] or rows[:1]
        model = self.model
        if self.is_deepspeed_enabled:  # ZeRO-3 shards are gathered by an inference engine, built once
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, acc)
            model = self._precompute_engine
        out: dict[int, tuple[float, float]] = {}
        for k in range(-(-len(rows) // acc.num_processes)):
            idx = mine[k % len(mine)]
            batch = self._prepare_inputs(self.data_collator([dataset[i] for i in idx]))
            with torch.no_grad():
                c, r = self.compute_ref_log_probs(model, batch)
            if k < len(mine):
                out.update(zip(idx, zip(c.float().tolist(), r.float().tolist())))
        merged = {}
        for part in gather_object([out]):
            merged.update(part)
        return (torch.tensor([merged[i][0] for i in range(n)]), torch.tensor([merged[i][1] for i in range(n)]))


def ref_cache_key(ref_hash: str, data_sha: str, template: str, max_length: int, autocast: str = "none") -> str:
    """autocast: the reference pass's mixed precision (bf16 autocast over fp32 weights gives other
    logprobs than the weights' own dtype); before it was in the key, packed references ran without it."""
    blob = json.dumps({"ref": ref_hash, "data": data_sha, "template": template, "max_length": max_length,
                       "autocast": autocast})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def geometry(st: DPOStage, world: int, items_per_micro: float | None = None) -> Geometry:
    """batch_pairs pairs a step. Padded: micro_batch_size pairs (chosen + rejected rows) a micro-batch;
    packed: one row of max_length holding `items_per_micro` pairs on average (known once the pairs
    are tokenized; the dry run assumes micro_batch_size)."""
    per_micro = items_per_micro or float(st.micro_batch_size)
    accum, warn = accumulation(st.batch_pairs, per_micro, world, "batch_pairs", rounding=round)
    if st.packing:
        return Geometry(max(1, int(per_micro)), accum, world, per_micro, 2 * st.max_length, st.max_length,
                        warnings=warn)
    return Geometry(st.micro_batch_size, accum, world, per_micro, 2 * st.max_length,
                    2 * st.micro_batch_size * st.max_length, warnings=warn)


def run(ctx: StageContext) -> dict:
    st = ctx.stage
    if ctx.mix.format != "preference":
        raise ValueError(f"{ctx.mix.manifest['mix']}: DPO needs prompt/chosen/rejected rows, got {ctx.mix.format!r}")
    # setup
    model, tok = load_stage_model(ctx)
    rows = ctx.mix.rows
    if st.rejected_from_policy:
        if not all(r.get("ground_truth") is not None for r in rows):
            raise ValueError(f"{ctx.mix.manifest['mix']}: rejected_from_policy needs a ground_truth column")
        rows, replaced = policy_rejections(model, tok, rows, st.rejected_max_new_tokens, st.seed)
        log.info("%s: %d of %d rejected answers replaced by the policy's own wrong answers", ctx.name, replaced,
                 len(rows))
        ctx.metrics.write({"stage": ctx.name, "step": 0, "data/rejected_from_policy": replaced})
    sizes: list[int] = []
    train_rows, counts = clean_pairs(rows, tok, st.max_length, st.overlong, lengths=sizes)
    if any(counts.values()):
        log.warning("%s: pairs dropped/truncated: %s (of %d)", ctx.name, counts, len(ctx.mix.rows))
    ctx.metrics.write({"stage": ctx.name, "step": 0, **{f"data/{k}": v for k, v in counts.items()}})
    eval_pairs = []
    if st.eval_pairs:
        eval_pairs, _ = clean_pairs(resolve_mix(resolve_file(st.eval_pairs, ctx.recipe)).rows, tok, st.max_length,
                                    st.overlong)
    cache_dir = RunDir(ctx.recipe.output_dir).cache(ctx.name)

    def cache_file(pairs: list[dict]):
        # Keyed by the pairs actually trained on (policy rejections change them), not just the mix file,
        # and by the weights hash TRL takes in its __init__ (a 7B hash costs ~1 min: done once, not twice).
        sha = rows_hash(pairs)
        autocast = "bf16" if st.bf16 else "none"
        return lambda ref_hash: cache_dir / f"ref-{ref_cache_key(ref_hash, sha, ctx.chat_template, st.max_length, autocast)}.pt"
    cache = {"train": cache_file(train_rows), **({"eval": cache_file(eval_pairs)} if eval_pairs else {})}
    micro, pairs_per_row = st.micro_batch_size, float(st.micro_batch_size)
    if st.packing:  # a micro-batch is a row of max_length tokens holding as many pairs as fit
        from posttrain.data.packing import PackedRowBatches
        pairs_per_row = PackedRowBatches(sizes, st.max_length, seed=st.seed).items_per_row
        micro = max(1, int(pairs_per_row))  # reference precompute and eval batches
    geo = geometry(st, world_size(), pairs_per_row)
    warn_geometry(ctx, geo)
    grad_accum = geo.grad_accum
    args = DPOConfig(**training_args(st, ctx.trainer_dir, grad_accum, micro),
                     loss_type=[TRL_LOSS[st.loss_type]] + (["sft"] if st.sft_weight else []),
                     loss_weights=[1.0, st.sft_weight] if st.sft_weight else None, beta=st.beta, max_length=st.max_length,
                     truncation_mode="keep_start", precompute_ref_log_probs=True, dataset_num_proc=None)
    if st.packing:
        from posttrain.model.packing import enable_exact_packing
        log.info("%s: packed pairs, kernels %s", ctx.name,
                 enable_exact_packing(model, allow_fallback=ctx.recipe.cfg.model.allow_kernel_fallback))
    tput = ThroughputCallback(ctx.metrics, ctx.name, model.config, st.max_length, world_size())
    mean_seq = sum(sizes) / max(1, 2 * len(sizes))  # each pair is two documents
    tput.doc_len = lambda logs: mean_seq
    trainer = CachedRefDPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list([tokenize_pair(tok, r) for r in train_rows]),
        eval_dataset=Dataset.from_list([tokenize_pair(tok, r) for r in eval_pairs]) if eval_pairs else None,
        processing_class=tok,
        ref_cache=cache, packed=st.packing, loss_type=st.loss_type, pairs_per_row=pairs_per_row,
        sft_weight=st.sft_weight, callbacks=[tput])
    summary = {}
    if eval_pairs:
        before = trainer.evaluate()
        summary["pref_accuracy_before"] = before.get("eval_rewards/accuracies")
        summary["margin_before"] = before.get("eval_rewards/margins")
    log.info("%s: %d pairs, ~%.0f pairs/step (%.2f a micro-batch x accum %d x world %d), %s beta %g, sft_weight %g, lr %g", ctx.name,
             len(train_rows), pairs_per_row * grad_accum * world_size(), pairs_per_row, grad_accum, world_size(),
             st.loss_type, st.beta, st.sft_weight, st.learning_rate)
    # train
    trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    summary.update(train_loss=trainer.state.log_history[-1].get("train_loss"), steps=trainer.state.global_step)
    if eval_pairs:
        after = trainer.evaluate()
        summary["pref_accuracy"] = after.get("eval_rewards/accuracies")
        summary["margin"] = after.get("eval_rewards/margins")
        ctx.metrics.write({"stage": ctx.name, "step": trainer.state.global_step,
                           **{k: v for k, v in after.items() if isinstance(v, (int, float))}})
        log.info("%s: held-out preference accuracy %.3f -> %.3f, margin %.3f -> %.3f", ctx.name,
                 summary["pref_accuracy_before"], summary["pref_accuracy"], summary["margin_before"], summary["margin"])
    # cleanup
    evals = finish(ctx, trainer, tok)
    return {**summary, **({"accuracy": evals["accuracy"]} if evals else {})}
