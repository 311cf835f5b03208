"""What every stage shares: its context, model/tokenizer setup, trainer arguments, and the
end-of-stage save + eval. Stages only talk to each other through output directories."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.data.mix import ResolvedMix
from posttrain.launch import is_main_process
from posttrain.metrics import MetricsWriter
from posttrain.model.load import load_model, load_tokenizer
from posttrain.recipe import Recipe, StageBase
from posttrain.rundir import EVALS, EVALS_BASE, METRICS, MODEL, TRAINER, write_json

log = logging.getLogger("posttrain")


@dataclass
class StageContext:
    recipe: Recipe
    name: str
    stage: StageBase
    work_dir: Path
    """Where this attempt writes: trainer checkpoints, model/, metrics.jsonl, evals.json."""
    init_dir: Path | None
    """Finished model of the stage this one starts from; None = the recipe's base model."""
    chat_template: str
    mix: ResolvedMix
    eval_rows: list[dict]

    @property
    def trainer_dir(self) -> Path:
        return self.work_dir / TRAINER

    @property
    def model_dir(self) -> Path:
        return self.work_dir / MODEL

    @property
    def metrics(self) -> MetricsWriter:
        return MetricsWriter(self.work_dir / METRICS)

    def resume_checkpoint(self) -> str | None:
        """Latest complete trainer checkpoint of this same attempt (the work dir is keyed by config hash).

        The Trainer writes a checkpoint in place, trainer_state.json last; a kill mid-save leaves a
        folder without it, which is skipped rather than resumed from.
        """
        cks = sorted(self.trainer_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        complete = [c for c in cks if (c / "trainer_state.json").is_file()]
        if len(complete) < len(cks) and cks[-1] not in complete:
            log.warning("%s: %s is incomplete (killed while saving?); resuming from %s", self.name, cks[-1],
                        complete[-1] if complete else "the start")
        return str(complete[-1]) if complete else None


def load_stage_model(ctx: StageContext):
    m = ctx.recipe.cfg.model
    if torch.cuda.is_available():  # before anything compiles (DPO's reference pass does, in the trainer's init)
        from posttrain.model.compile_cache import use_kernel_cache, warmup_message
        log.info("%s: %s", ctx.name, warmup_message(use_kernel_cache(ctx.recipe.cfg.kernel_cache,
                                                                      ctx.recipe.output_dir)))
    tok = load_tokenizer(str(ctx.init_dir) if ctx.init_dir else (m.tokenizer or m.name), ctx.chat_template)
    src = ctx.init_dir or m.name
    model = load_model(src, m.dtype, m.attn_implementation, tokenizer=tok, seed=ctx.recipe.cfg.seed)
    log.info("%s: model from %s (%s params, %s)", ctx.name, src, f"{sum(p.numel() for p in model.parameters()):,}",
             m.dtype)
    if m.fused_layers:
        fuse_stage_layers(ctx, model)
    return model, tok


def fuse_stage_layers(ctx: StageContext, model) -> None:
    """`model.fused_layers` (on by default): fla's fused norm/MLP kernels on CUDA; the torch code on CPU."""
    if not torch.cuda.is_available():
        log.debug("%s: model.fused_layers applies on CUDA only; the torch norms and MLPs run on CPU", ctx.name)
        return
    from posttrain.model.fused import fuse_layers
    from posttrain.model.kernels import fla_problem
    problem = fla_problem()
    if problem:
        if not ctx.recipe.cfg.model.allow_kernel_fallback:
            raise RuntimeError(f"{ctx.recipe.source}: model.fused_layers: {problem} "
                               "(or set model.fused_layers: false)")
        log.warning("%s: model.fused_layers skipped: %s", ctx.name, problem)
        return
    log.info("%s: fused layers (fla): %s", ctx.name, fuse_layers(model))


def warn_geometry(ctx: StageContext, geo) -> None:
    """Batch sizes that do not divide: said once at the start, as `--dry-run` says them."""
    for w in geo.warnings:
        log.warning("%s: %s", ctx.name, w)


def training_args(st: StageBase, out: Path, grad_accum: int, micro_batch: int) -> dict:
    """TrainingArguments shared by every stage, straight from the recipe fields."""
    return dict(
        output_dir=str(out), learning_rate=st.learning_rate, lr_scheduler_type=st.lr_scheduler,
        warmup_steps=st.warmup_ratio, num_train_epochs=st.num_epochs, max_steps=st.max_steps,
        per_device_train_batch_size=micro_batch, per_device_eval_batch_size=micro_batch,
        gradient_accumulation_steps=grad_accum, weight_decay=st.weight_decay, max_grad_norm=st.max_grad_norm,
        adam_beta1=st.adam_beta1, adam_beta2=st.adam_beta2,
        bf16=st.bf16, fp16=False, gradient_checkpointing=st.gradient_checkpointing,
        logging_steps=st.logging_steps, save_steps=st.save_steps, save_strategy="steps", save_total_limit=2,
        report_to=[], seed=st.seed, data_seed=st.seed, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, remove_unused_columns=False,
    )


def eval_stage_model(ctx: StageContext, model, tokenizer, label: str = "after") -> dict:
    """Greedy held-out eval (task accuracy, format, length); {} when the stage has no eval mix."""
    if not ctx.eval_rows or ctx.stage.eval.max_examples <= 0:
        return {}
    from posttrain.evaluate import evaluate_model
    e = ctx.stage.eval
    ev = evaluate_model(model, tokenizer, ctx.eval_rows[: e.max_examples], e.max_new_tokens, e.batch_size)
    log.info("%s: held-out accuracy %s %.3f, format %.3f, mean length %.1f (n=%d)", ctx.name, label,
             ev["accuracy"], ev["format"], ev["mean_length"], ev["n"])
    return ev


def base_eval(ctx: StageContext, model, tokenizer) -> dict:
    """The untrained base model's eval, for the first stage only: the 'before' of the whole run."""
    if ctx.init_dir is not None:
        return {}
    ev = eval_stage_model(ctx, model, tokenizer, "before (base model)")
    if ev:
        write_json(ctx.work_dir / EVALS_BASE, ev)
    return ev


def finish(ctx: StageContext, trainer, tokenizer) -> dict:
    """Save the stage's model (model/) in vLLM's naming, then the held-out eval into evals.json.

    The state dict goes through the trainer's accelerator, which gathers ZeRO-3 shards onto the
    main process; every process takes part in the gather and the eval, only the main one writes.
    """
    acc = trainer.accelerator
    state = acc.get_state_dict(trainer.model_wrapped)
    model = acc.unwrap_model(trainer.model)
    if is_main_process():
        model.save_pretrained(ctx.model_dir, state_dict=state, save_original_format=False)
        tokenizer.save_pretrained(ctx.model_dir)
    acc.wait_for_everyone()
    ev = eval_stage_model(ctx, model, tokenizer)
    if ev and is_main_process():
        write_json(ctx.work_dir / EVALS, ev)
    return ev
