"""RL stage: GRPO with verifiable rewards on TRL's GRPOTrainer, OlmoRL settings.

What TRL gives is used as is: group advantages without std scaling (`scale_rewards: none`),
token-level loss (`dapo`), clip-higher (epsilon / epsilon_high), no KL (beta 0), overlong
masking, truncated importance sampling against vLLM's logprobs (the trainer's side taken from the
training forward when that is exact: stages/rl_tis.py). What it lacks is added in
`ActiveGRPOTrainer`: prompts come from a `PromptQueue` that retires prompts solved >= 87.5% of
the time, zero-variance groups are dropped and the batch refilled with fresh prompts (active
sampling), and the queue's state rides in every checkpoint so a resumed run never replays
prompts. Rewards come from `reward/` by name and weight. With `async_steps: N` a rollout producer
(`rollout/producer.py`) generates up to N steps ahead and hands finished groups to TRL's
`rollout_func`; everything above works on them unchanged.

setup (policy, prompts, rewards, engine) -> train -> cleanup (save, eval).
Run it through the pipeline: `posttrain run tiny --stage rl`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from posttrain.data.templates import generation_prefix
from posttrain.metrics import ThroughputCallback
from posttrain.rollout import async_stage
from posttrain.rollout.sampler import PromptQueue, nonzero_variance_groups
from posttrain.rollout.vllm_engine import prepare_vllm
from posttrain.launch import local_rank, rank, world_size
from posttrain.model.load import end_token_ids
from posttrain.recipe import GRPOStage
from posttrain.stages.common import StageContext, finish, load_stage_model, training_args, warn_geometry
from posttrain.stages.registry import Geometry, accumulation
from posttrain.stages.rl_batch import cat_batches, refill_size, select_rows, step_time_split
from posttrain.stages.rl_tis import GapStats, tis_ratio
from posttrain.stages.rl_trim import REGROUP_SAFE, regroup_by_length, trimmed_logps
from reward.health import check_crashes

log = logging.getLogger("posttrain")


def queue_file(rank: int) -> str:
    """Each rank draws its own stride of prompts and records its own pass rates, so each saves its own state."""
    return "prompt_queue.json" if rank == 0 else f"prompt_queue.rank{rank}.json"


def with_prefix(fn, prefix: str):
    """The Think template puts `<think>` in the prompt; rewards should see the whole answer."""
    if not prefix:
        return fn

    def wrapped(completions, **kw):
        def add(c):
            if isinstance(c, list) and c and isinstance(c[-1], dict):
                return c[:-1] + [{**c[-1], "content": prefix + (c[-1].get("content") or "")}]
            return prefix + c if isinstance(c, str) else c
        return fn([add(c) for c in completions], **kw)
    wrapped.__name__ = getattr(fn, "__name__", "reward")
    return wrapped


def same_columns(rows: list[dict]) -> list[dict]:
    """Rows with every column of the mix (None where a source lacks it): TRL hands rewards the columns
    of a batch's first row, and a mix of sources (Dolci-Think-RL's `id`, Dolci-Instruct-RL's `solution`)
    differs from row to row.

    A column that is a list in some rows and a scalar in others (Dolci's list-valued `ground_truth` /
    `dataset` beside a plain source) gets its scalars wrapped: Arrow holds one type a column, and a
    one-element list routes and scores as the scalar does (reward.registry.row_units).

    >>> same_columns([{"prompt": 1, "id": "a"}, {"prompt": 2, "solution": "s"}])[1]
    {'prompt': 2, 'id': None, 'solution': 's'}
    >>> [r["ground_truth"] for r in same_columns([{"ground_truth": "2"}, {"ground_truth": ["4"]}, {}])]
    [['2'], ['4'], None]
    """
    cols = list(dict.fromkeys(k for r in rows for k in r))
    listy = {k for k in cols if any(isinstance(r.get(k), (list, tuple)) for r in rows)}
    return [{k: [r[k]] if k in listy and r.get(k) is not None and not isinstance(r[k], (list, tuple)) else r.get(k)
             for k in cols} for r in rows]


class ActiveGRPOTrainer(GRPOTrainer):
    def __init__(self, *a, queue: PromptQueue, prompt_rows: list[dict], active: bool, solve_threshold: float,
                 max_refills: int = 8, reward_crash_limit: float = 1.0, **kw):
        super().__init__(*a, **kw)
        self.queue, self.prompt_rows, self.active = queue, prompt_rows, active
        self.reward_crash_limit = reward_crash_limit
        self.solve_threshold, self.max_refills = solve_threshold, max_refills
        self._last_rewards: torch.Tensor | None = None
        # Step time split: rollout rounds (generation + scoring [+ TRL's old logprobs]) and weight sync,
        # summed per optimizer step; the rest of TRL's step_time is training.
        self._split = {"rollout": 0.0, "sync": 0.0, "new_tokens": 0.0}
        self._new_tokens = 0  # this process's completion tokens since the last gather
        self.rollouts = None  # async RL: a RolloutProducer (rollout/async_stage.attach)
        self._groups = []  # the producer's groups for the round TRL is scoring (read by its rollout_func)
        self._loss_inputs = None  # the micro-batch whose TIS ratio the training forward will fill (rl_tis)
        self._gap = None  # GapStats of the optimizer step in progress
        if self.use_vllm:
            sync = self.vllm_generation.sync_weights

            def timed_sync():
                t = time.perf_counter()
                sync()
                self._split["sync"] += time.perf_counter() - t
            self.vllm_generation.sync_weights = timed_sync

    def _prepare_inputs(self, generation_batch):
        spg = self.args.steps_per_generation
        fresh = self.model.training and (self._step % (spg * self.num_iterations) == 0 or self._buffered_inputs is None)
        inputs = super()._prepare_inputs(generation_batch)
        ga = self.current_gradient_accumulation_steps
        if fresh and ga > 1 and self._regroup_safe():  # rows of a step into micro-batches by length
            self._buffered_inputs = regroup_by_length(self._buffered_inputs, ga)
            inputs = self._buffered_inputs[self._step % spg]
        return inputs

    def _regroup_safe(self) -> bool:
        # per-micro-batch statistics (bnpo's normalizer, the entropy bonus, entropy masking) would change
        return (self.loss_type in REGROUP_SAFE and not getattr(self, "_entropy_bonus_enabled", False)
                and getattr(self.args, "top_entropy_quantile", 1.0) >= 1.0)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False, **extra):
        out = trimmed_logps(super()._get_per_token_logps_and_entropies, model, input_ids, attention_mask,
                            logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra)
        pending, self._loss_inputs = self._loss_inputs, None
        if pending is not None:  # the training forward of a micro-batch that has no TIS ratio yet
            self._fill_tis(pending, out[0].detach())
        return out

    def tis_in_loss(self) -> bool:
        """TIS from the training forward instead of TRL's old-logprob pass (stages/rl_tis.py): exact
        when each generation batch trains within one optimizer step (TRL's own alignment test); vespo
        reads the ratio elsewhere, so it keeps TRL's pass."""
        a = self.args
        return (self.use_vllm and self.vllm_importance_sampling_correction and self.loss_type != "vespo"
                and a.gradient_accumulation_steps % (a.steps_per_generation * self.num_iterations) == 0)

    def _compute_loss(self, model, inputs):
        if self.model.training and "importance_sampling_ratio" not in inputs and self.tis_in_loss():
            self._loss_inputs = inputs  # TRL reads inputs["importance_sampling_ratio"] after its forward
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_inputs = None

    @staticmethod
    def _loss_mask(batch: dict) -> torch.Tensor:
        """The tokens TRL's loss (and its ratio) covers: completion tokens, less tool output (`_compute_loss`)."""
        mask = batch["completion_mask"]
        return mask * batch["tool_mask"] if "tool_mask" in batch else mask

    def _fill_tis(self, inputs: dict, logps: torch.Tensor) -> None:
        mask = self._loss_mask(inputs)
        samp = inputs["sampling_per_token_logps"]
        ratio = tis_ratio(logps, samp, mask, self.vllm_importance_sampling_mode,
                          self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max)
        inputs["importance_sampling_ratio"] = ratio
        self._step_gap().add(logps, samp, mask, ratio, inputs.get("rollout_lag"))

    def _step_gap(self, trl_logged: bool = False) -> GapStats:
        if self._gap is None:
            self._gap = GapStats(self.rollouts.n_async + 1 if self.rollouts is not None else 0, trl_logged)
        return self._gap

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        r = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = r  # gathered over processes, [rows, reward funcs], NaN where a reward does not apply
        return r

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Adds reward health (rows scored / None / crashed and mean per reward, summed over ranks) to
        every training log, so metrics.jsonl and the progress line carry it; stops on a crash storm."""
        if self.model.training:
            health = reward_health(self.reward_func_names, self.accelerator)
            logs.update(health)
            check_crashes(health, self.reward_crash_limit)
            # TRL averages each metric over the logging window: a maximum must stay the window's maximum
            m = self._metrics["train"]
            for k in [k for k in m if k.endswith("_max") and k.startswith("async/")]:
                valid = [v for v in m[k] if not math.isnan(v)]
                m[k] = [max(valid)] if valid else m[k]
        super().log(logs, start_time)

    def _generate(self, prompts):
        out = super()._generate(prompts)
        if self.model.training:
            self._new_tokens += sum(len(c) for c in out[1])  # completion_ids, before any masking
        return out

    def _round(self, n_prompts: int, first: bool = True) -> tuple[dict, list[bool]]:
        """Generate and score one batch of fresh prompts; record pass rates; say which groups carry signal.
        Async: the step's first round takes the producer's oldest groups, a refill orders fresh ones."""
        g = self.num_generations
        if self.rollouts is None:
            idx = self.queue.take(n_prompts)
        else:
            self._groups = self.rollouts.primary(n_prompts) if first else self.rollouts.refill(n_prompts)
            idx = [gr.idx for gr in self._groups]
        inputs = [dict(self.prompt_rows[i]) for i in idx for _ in range(g)]
        skip_old = self.tis_in_loss()  # TRL's old-logprob pass (and its ratio) runs only while this flag is on
        if skip_old:
            self.vllm_importance_sampling_correction = False
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            if skip_old:
                self.vllm_importance_sampling_correction = True
        if self.rollouts is not None:
            lags = [self.state.global_step - gr.version for gr in self._groups]
            out["rollout_lag"] = torch.tensor(lags, device=out["advantages"].device).repeat_interleave(g)
        if not skip_old and "old_per_token_logps" in out and "sampling_per_token_logps" in out:
            # TRL's old-logprob pass ran (mini_batches > 1, vespo) and logged its own gap keys; add the k3
            # and per-lag figures from the same tensors, over every row of the round as TRL's are.
            mask = self._loss_mask(out)
            ratio = out.get("importance_sampling_ratio", torch.ones_like(mask, dtype=torch.float))
            self._step_gap(trl_logged=True).add(out["old_per_token_logps"], out["sampling_per_token_logps"],
                                               mask, ratio, out.get("rollout_lag"))
        w = self.reward_weights.to(self._last_rewards.device)
        total = (torch.nan_to_num(self._last_rewards, nan=0.0) * w).sum(dim=1)
        lo = self.accelerator.process_index * len(inputs)
        mine = total[lo: lo + len(inputs)].tolist()
        for j, i in enumerate(idx):
            group = mine[j * g:(j + 1) * g]
            self.queue.record(i, sum(x >= self.solve_threshold for x in group), g)
        return out, nonzero_variance_groups(mine, g)

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        g, t0 = self.num_generations, time.perf_counter()
        want = len(inputs) // g  # groups this process trains on per generation batch
        if self.rollouts is not None:
            self._split["sync"] += self.rollouts.step_start(self.model, self.state.global_step, self.state.max_steps)
            self._last_loaded_step = self.state.global_step  # the producer pushed the weights, not TRL
        kept, rounds, seen, dropped, need = [], 0, 0, 0, want
        trained: list = []  # the async producer's groups behind the kept rows, in the batch's order
        while True:
            out, signal = self._round(need, first=rounds == 0)
            rounds += 1
            seen += len(signal)
            keep = signal if self.active else [True] * len(signal)
            dropped += keep.count(False)
            if self.rollouts is not None:
                trained += [gr for gr, s in zip(self._groups, keep) if s]
            rows = torch.tensor([j * g + k for j, s in enumerate(keep) if s for k in range(g)], dtype=torch.long)
            if len(rows):
                kept.append(select_rows(out, rows.to(out["advantages"].device)))
            have = sum(len(p["advantages"]) for p in kept) // g
            # Every process runs the same rounds with the same number of prompts (generation gathers
            # across them); a refill asks for the shortfall scaled by the step's signal rate so far.
            stats = self.accelerator.gather(torch.tensor([[max(want - have, 0), seen, have]],
                                                         device=self.accelerator.device)).view(-1, 3)
            short = int(stats[:, 0].max())
            if short == 0 or rounds > self.max_refills:
                break
            need = refill_size(short, int(stats[:, 1].sum()), int(stats[:, 2].sum()), want)
        if not kept:  # nothing carried signal even after refills: train on the last batch, advantages are 0
            kept, trained = [out], list(self._groups) if self.rollouts is not None else []
        batch = cat_batches(kept)
        n = min(want, len(batch["advantages"]) // g) * g
        if self.rollouts is not None:  # one log line per group trained (a short step's pad copies are not)
            self.rollouts.log(trained[:n // g], self.accelerator.process_index)
        if n < len(batch["advantages"]):
            batch = select_rows(batch, torch.arange(n, device=batch["advantages"].device))
        if n < want * g:
            # Short after max_refills: pad with zero-advantage copies so every step has the same shape.
            reps = torch.arange(want * g - n, device=batch["advantages"].device) % max(n, 1)
            pad = select_rows(batch, reps)
            pad["advantages"] = torch.zeros_like(pad["advantages"])
            batch = cat_batches([batch, pad])
        batch["num_items_in_batch"] = self.accelerator.gather(batch["completion_mask"].sum()).sum()
        m = self._metrics["train"]
        m["active/groups_filtered_frac"].append(dropped / max(seen, 1))
        m["active/rounds"].append(rounds)
        m["active/prompts_retired"].append(float(sum(self.queue.is_retired(i) for i in self.queue.solved)))
        m["active/solve_rate"].append(sum(s for s, _ in self.queue.solved.values())
                                      / max(sum(t for _, t in self.queue.solved.values()), 1))
        for k, v in (self.rollouts.step_metrics() if self.rollouts is not None else {}).items():
            m[k].append(v)
        new = self.accelerator.gather(torch.tensor([self._new_tokens], device=self.accelerator.device)).sum()
        self._split["new_tokens"] += float(new)
        self._new_tokens = 0
        self._split["rollout"] += time.perf_counter() - t0
        return batch

    def training_step(self, *a, **kw):
        out = super().training_step(*a, **kw)
        train = self._metrics["train"]
        if self._step % self.current_gradient_accumulation_steps == 0:
            # TRL has just logged the optimizer step's training_step wall time as step_time; split it.
            for k, v in step_time_split(step=train["step_time"][-1], **self._split).items():
                train[k].append(v)
            gap, self._gap = self._gap, None
            for k, v in (gap.finish(self.accelerator.gather) if gap is not None else {}).items():
                train[k].append(v)
            self._split = dict.fromkeys(self._split, 0.0)
        return out

    def _save_checkpoint(self, model, trial):
        # Before the Trainer's files: its trainer_state.json comes last and marks the checkpoint
        # complete (StageContext.resume_checkpoint), so a complete checkpoint always has the queue.
        ck = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        ck.mkdir(parents=True, exist_ok=True)
        in_flight = self.rollouts.in_flight() if self.rollouts is not None else []
        (ck / queue_file(self.queue.rank)).write_text(json.dumps(self.queue.state_dict(in_flight)))
        super()._save_checkpoint(model, trial)


def reward_health(names: list[str], accelerator) -> dict:
    """reward.health's log entries since the last log, the per-reward counts summed over processes."""
    from reward import metrics
    from reward.health import health_logs, take_health_logs
    logs = take_health_logs() if accelerator.num_processes == 1 else None
    if logs is None:
        counts = metrics.snapshot(reset_after=True)
        keys = [f"{n}/{k}" for n in names for k in ("scored", "none", "crashed", "score_sum")]
        t = accelerator.reduce(torch.tensor([float(counts.get(k, 0)) for k in keys], device=accelerator.device),
                               reduction="sum")
        counts.update(zip(keys, t.tolist()))
        logs = health_logs(counts)
    return logs


def build_rewards(specs: list[dict], prefix: str):
    from reward import build_reward_fn
    funcs, weights = build_reward_fn([dict(s) for s in specs])
    return [with_prefix(f, prefix) for f in funcs], weights


def geometry(st: GRPOStage, world: int, items_per_micro: float | None = None) -> Geometry:
    """Each generation batch of prompts_per_step x rollouts_per_prompt completions is trained in
    `mini_batches` optimizer steps (open-instruct's num_mini_batches), in micro-batches of whole groups
    (micro_batch_size rounded down to a multiple of the group)."""
    g = st.rollouts_per_prompt
    micro = max(g, st.micro_batch_size - st.micro_batch_size % g)
    per_generation, warn = accumulation(st.prompts_per_step * g, micro, world, "prompts_per_step x rollouts_per_prompt")
    mini = getattr(st, "mini_batches", 1)
    if per_generation % mini:
        warn.append(f"mini_batches {mini}: the {per_generation} micro-batches of {micro} completions a generation "
                    "batch holds per process do not split evenly; change micro_batch_size")
    if micro != st.micro_batch_size:
        warn.insert(0, f"micro_batch_size {st.micro_batch_size} is not a multiple of rollouts_per_prompt {g}: "
                       f"{micro} completions a micro-batch")
    seq = st.max_prompt_length + st.max_completion_length
    colocated = st.engine == "vllm" and st.vllm_mode == "colocate"
    return Geometry(micro, max(1, per_generation // mini), world, micro, seq, micro * seq, items_per_data_row=g,
                    engine_fraction=st.vllm_gpu_memory_utilization if colocated else 0.0, warnings=warn)


def grpo_config(st, output_dir, reward_weights: list[float], stop_token_ids: list[int] | None = None) -> GRPOConfig:
    """The recipe's OlmoRL fields as TRL's GRPOConfig (batch sizes from `geometry`). `stop_token_ids`:
    every end token (`<|im_end|>` and `<|endoftext|>`) goes to vLLM's sampling parameters, not only
    the tokenizer's eos."""
    geo = geometry(st, world_size())
    g, micro, mini = st.rollouts_per_prompt, geo.micro_batch, getattr(st, "mini_batches", 1)
    per_generation = geo.grad_accum * mini  # micro-batches per generation batch
    if any(w.startswith("mini_batches") for w in geo.warnings):
        raise ValueError(next(w for w in geo.warnings if w.startswith("mini_batches")))
    base = training_args(st, output_dir, geo.grad_accum, micro)
    vllm = st.engine == "vllm"
    return GRPOConfig(
        **base, num_generations=g, steps_per_generation=per_generation, num_iterations=1, beta=st.beta,
        loss_type=st.loss_type, epsilon=st.epsilon, epsilon_high=st.epsilon_high, scale_rewards=st.scale_rewards,
        temperature=st.temperature, top_p=1.0, max_completion_length=st.max_completion_length,
        mask_truncated_completions=st.mask_truncated_completions, reward_weights=reward_weights,
        use_vllm=st.engine == "vllm", vllm_mode=st.vllm_mode,
        vllm_enable_sleep_mode=st.engine == "vllm" and st.vllm_mode == "colocate",
        vllm_gpu_memory_utilization=st.vllm_gpu_memory_utilization, vllm_server_base_url=st.vllm_server_base_url,
        vllm_max_model_length=st.max_prompt_length + st.max_completion_length,
        vllm_importance_sampling_correction=st.engine == "vllm", vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=st.tis_cap, shuffle_dataset=False, log_completions=False,
        generation_kwargs={"stop_token_ids": stop_token_ids} if vllm and stop_token_ids else None,
    )


def run(ctx: StageContext) -> dict:
    from posttrain.stages.local_eval import local_eval_callbacks
    st = ctx.stage
    if ctx.mix.format != "prompt":
        raise ValueError(f"{ctx.mix.manifest['mix']}: GRPO needs prompt rows with ground_truth, got {ctx.mix.format!r}")
    from reward.health import check_coverage, label_report
    # Before any model loads: rows no reward can score would spend full rollouts on nothing.
    check_coverage(label_report(ctx.mix.rows, st.rewards), f"{ctx.name} ({ctx.mix.manifest['mix']})")
    # setup
    model, tok = load_stage_model(ctx)
    if st.engine == "vllm" and st.vllm_mode == "colocate":  # a server has its own model and plugin
        prepare_vllm(ctx.work_dir, model, tok)
    plens = [len(tok.apply_chat_template(r["prompt"], tokenize=True, return_dict=False, add_generation_prompt=True))
             for r in ctx.mix.rows]
    rows = same_columns([r for r, n in zip(ctx.mix.rows, plens) if n <= st.max_prompt_length])
    kept = [n for n in plens if n <= st.max_prompt_length]
    mean_prompt = sum(kept) / max(1, len(kept))
    if len(rows) < len(ctx.mix.rows):
        log.warning("%s: dropped %d prompts longer than max_prompt_length %d", ctx.name,
                    len(ctx.mix.rows) - len(rows), st.max_prompt_length)
    funcs, weights = build_rewards(st.rewards, generation_prefix(ctx.chat_template))
    warn_geometry(ctx, geometry(st, world_size()))
    args = grpo_config(st, ctx.trainer_dir, weights, stop_token_ids=end_token_ids(tok))
    if st.async_steps:
        async_stage.prepare_args(args, st)
    queue = PromptQueue(rows, seed=st.seed, skip_solved_rate=st.skip_solved_rate, rank=rank(), world=world_size())
    resume = ctx.resume_checkpoint()
    saved = Path(resume) / queue_file(rank()) if resume else None
    if saved and saved.is_file():
        queue.load_state_dict(json.loads(saved.read_text()))
        log.info("%s: prompt queue restored (epoch %d, position %d)", ctx.name, queue.epoch, queue.pos)
    # TRL's dataloader only paces the steps; prompts come from the queue.
    tput = ThroughputCallback(ctx.metrics, ctx.name, model.config, st.max_prompt_length + st.max_completion_length,
                              world_size())
    # A rollout is one document: its prompt plus the completion lengths TRL logs each step.
    tput.doc_len = lambda logs: mean_prompt + logs.get("completions/mean_length", st.max_completion_length)
    trainer = ActiveGRPOTrainer(
        model=model, args=args, reward_funcs=funcs, train_dataset=Dataset.from_list(rows), processing_class=tok,
        queue=queue, prompt_rows=rows, active=st.active_sampling, solve_threshold=st.solve_threshold,
        reward_crash_limit=st.reward_crash_limit, callbacks=[tput, *local_eval_callbacks(ctx, tok)],
        rollout_func=async_stage.from_producer if st.async_steps else None)
    if st.async_steps:
        async_stage.attach(trainer, st, queue, rows, tok, ctx.work_dir,
                           resume_step=int(Path(resume).name.split("-")[-1]) if resume else 0)
    log.info("%s: %d prompts, %d prompts x %d rollouts per step, engine %s, lr %g", ctx.name, len(rows),
             st.prompts_per_step, st.rollouts_per_prompt, st.engine, st.learning_rate)
    # train
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if trainer.rollouts is not None:
            trainer.rollouts.close()
    summary = {"steps": trainer.state.global_step,
               "reward_last": next((h["reward"] for h in reversed(trainer.state.log_history) if "reward" in h), None),
               # main process's queue: where the next prompt would come from, and how many were skipped
               "prompt_queue": {k: v for k, v in queue.state_dict().items() if k != "solved"}}
    # cleanup
    evals = finish(ctx, trainer, tok)
    trainer.accelerator.wait_for_everyone()  # no engine still reading the starting checkpoint
    if st.engine == "vllm" and local_rank() == 0:
        for init in ctx.work_dir.glob("init_model-*"):  # a full copy of the starting model (15 GB at 7B)
            shutil.rmtree(init, ignore_errors=True)
    return {**summary, **({"accuracy": evals["accuracy"]} if evals else {})}

