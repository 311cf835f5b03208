"""Evals during RL every N steps (open-instruct's `local_eval_every`): see whether RL is helping
before the stage ends, on the stage's held-out mix or on a small benchmark suite.

Greedy on the held-out mix (the same `evaluate_model` the end-of-stage eval uses, on its first
`local_eval_examples` rows), or a suite through the harness on the in-training model (HF
generate; vLLM sleeps meanwhile in colocate mode). Every process takes part, as in the
end-of-stage eval; the main one writes `local_eval/*` rows into the stage's metrics.jsonl.
"""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from posttrain.launch import is_main_process

log = logging.getLogger("posttrain")


class LocalEvalCallback(TrainerCallback):
    def __init__(self, ctx, tokenizer):
        self.ctx, self.tok, st = ctx, tokenizer, ctx.stage
        self.every, self.n = st.local_eval_every, st.local_eval_examples
        self.suite = None
        if st.local_eval_suite:
            from posttrain.suites import load_suite
            self.suite = load_suite(st.local_eval_suite)

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.every <= 0 or state.global_step % self.every or model is None:
            return
        was_training = model.training
        with torch.no_grad():
            rec = self._suite(model) if self.suite is not None else self._mix(model)
        model.train(was_training)
        if rec and is_main_process():
            self.ctx.metrics.write({"step": state.global_step, **rec})
            log.info("%s step %d: %s", self.ctx.name, state.global_step,
                     ", ".join(f"{k} {v:.3f}" for k, v in rec.items() if isinstance(v, float)))

    def _mix(self, model) -> dict:
        from posttrain.evaluate import evaluate_model
        rows = self.ctx.eval_rows[: self.n]
        if not rows:
            return {}
        e = self.ctx.stage.eval
        ev = evaluate_model(model, self.tok, rows, e.max_new_tokens, e.batch_size)
        return {f"local_eval/{k}": float(ev[k]) for k in ("accuracy", "format", "mean_length")}

    def _suite(self, model) -> dict:
        from lm_eval.models.huggingface import HFLM
        from posttrain.harness import Target, evaluate_suite
        lm = HFLM(pretrained=model, tokenizer=self.tok, batch_size=self.ctx.stage.eval.batch_size)
        t = Target(self.ctx.name, None, self.ctx.chat_template, "in-training")
        res = evaluate_suite(t, self.suite, "hf", lm=lm)
        out = {}
        for name, r in res["tasks"].items():
            for k, suffix in (("score", ""), ("stderr", "_stderr")):
                if r[k] is not None:  # None: no question scored, or one (no SE)
                    out[f"local_eval/{name}{suffix}"] = float(r[k])
        return out


def local_eval_callbacks(ctx, tokenizer) -> list:
    return [LocalEvalCallback(ctx, tokenizer)] if getattr(ctx.stage, "local_eval_every", 0) > 0 else []
