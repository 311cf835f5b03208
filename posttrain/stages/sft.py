"""SFT stage: TRL's SFTTrainer with assistant-only loss on Olmo's ChatML template.

setup (model, tokenizer, datasets) -> train (resuming from the attempt's last checkpoint)
-> cleanup (save model/, eval). Batch size is given in tokens per optimizer step, as the
published recipes state it (64 x 32,768 for Olmo Hybrid SFT); rows per step follow from
max_length. Run it through the pipeline: `posttrain run tiny --stage sft`.
"""

from __future__ import annotations

import logging

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from posttrain.data.packing import list_lengths, pad_packed_row
from posttrain.metrics import ThroughputCallback
from posttrain.launch import world_size
from posttrain.recipe import SFTStage
from posttrain.stages.common import StageContext, base_eval, finish, load_stage_model, training_args, warn_geometry
from posttrain.stages.registry import Geometry, accumulation

log = logging.getLogger("posttrain")


class FixedRowSFTTrainer(SFTTrainer):
    """SFTTrainer whose packed rows are padded to a multiple of max_length (`pad_packed_row`), so the
    kernels see one row shape; throughput keeps counting real tokens only."""

    def __init__(self, *a, row_multiple: int | None = None, **kw):
        super().__init__(*a, **kw)
        if row_multiple:
            inner, pad_id = self.data_collator, self.processing_class.pad_token_id
            self.data_collator = lambda examples: pad_packed_row(inner(examples), row_multiple, pad_id)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pad = inputs.pop("num_pad_tokens", None)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        # On every process, pad or not: the gather is a collective. TRL counted the padded row length.
        if pad is not None and model.training:
            dev = inputs["input_ids"].device
            self._total_train_tokens -= int(self.accelerator.gather_for_metrics(torch.tensor([pad], device=dev)).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return out


def _messages_only(rows: list[dict]) -> Dataset:
    return Dataset.from_list([{"messages": r["messages"]} for r in rows])


def geometry(st: SFTStage, world: int, items_per_micro: float | None = None) -> Geometry:
    """batch_tokens // max_length rows a step, in micro-batches of micro_batch_size rows (packed rows are
    filled to max_length, so a row is max_length tokens either way)."""
    rows_per_step = max(1, st.batch_tokens // st.max_length)
    accum, warn = accumulation(rows_per_step, st.micro_batch_size, world, "batch_tokens // max_length (rows)")
    if st.batch_tokens % st.max_length:
        warn.insert(0, f"batch_tokens {st.batch_tokens} is not a multiple of max_length {st.max_length}: "
                       f"{rows_per_step} rows a step")
    return Geometry(st.micro_batch_size, accum, world, st.micro_batch_size, st.max_length,
                    st.micro_batch_size * st.max_length, warnings=warn)


def run(ctx: StageContext) -> dict:
    st = ctx.stage
    if ctx.mix.format != "messages":
        raise ValueError(f"{ctx.mix.manifest['mix']}: SFT needs chat 'messages' rows, got format {ctx.mix.format!r}")
    # setup
    model, tok = load_stage_model(ctx)
    geo = geometry(st, world_size())
    warn_geometry(ctx, geo)
    grad_accum = geo.grad_accum
    # Packing: TRL packs rows best-fit-decreasing and its padding-free collator emits
    # cu_seq_lens; our patch makes the GDN state, the conv and attention honour them.
    args = SFTConfig(
        **training_args(st, ctx.trainer_dir, grad_accum, st.micro_batch_size),
        max_length=st.max_length, assistant_only_loss=True, packing=st.packing, packing_strategy="bfd",
        padding_free=st.packing, dataset_num_proc=None,
    )
    if st.packing:
        from posttrain.model.packing import enable_exact_packing
        report = enable_exact_packing(model, allow_fallback=ctx.recipe.cfg.model.allow_kernel_fallback)
        log.info("%s: packed rows of %d tokens, kernels %s", ctx.name, st.max_length, report)
    eval_ds = _messages_only(ctx.eval_rows[:256]) if ctx.eval_rows else None
    tput = ThroughputCallback(ctx.metrics, ctx.name, model.config, st.max_length, world_size())
    trainer = FixedRowSFTTrainer(model=model, args=args, train_dataset=_messages_only(ctx.mix.rows),
                                 eval_dataset=eval_ds, processing_class=tok, callbacks=[tput],
                                 row_multiple=st.max_length if st.packing else None)
    ds = trainer.train_dataset
    docs = [n for row in ds["seq_lengths"] for n in row] if "seq_lengths" in ds.column_names else \
        list_lengths(ds, "input_ids")
    mean_doc = sum(docs) / max(1, len(docs))
    tput.doc_len = lambda logs: mean_doc
    log.info("%s: %d rows, %d rows/step (micro %d x accum %d x world %d), lr %g",
             ctx.name, len(ctx.mix.rows), st.micro_batch_size * grad_accum * world_size(), st.micro_batch_size,
             grad_accum, world_size(), st.learning_rate)
    before = base_eval(ctx, model, tok) if not ctx.resume_checkpoint() else {}
    # train
    trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    summary = {"train_loss": trainer.state.log_history[-1].get("train_loss"), "steps": trainer.state.global_step}
    if eval_ds is not None:
        summary["eval_loss"] = trainer.evaluate().get("eval_loss")
        ctx.metrics.write({"stage": ctx.name, "step": trainer.state.global_step, "eval_loss": summary["eval_loss"]})
    # cleanup
    evals = finish(ctx, trainer, tok)
    if before:
        summary["base_accuracy"] = before["accuracy"]
    return {**summary, **({"accuracy": evals["accuracy"]} if evals else {})}
