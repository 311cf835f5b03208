"""Wiring async RL into the GRPO stage: TRL settings, engine choice, the producer on the trainer.

TRL's GRPOTrainer keeps doing everything after generation (decoding, rewards, advantages, the
loss): the producer's finished groups reach it through TRL's `rollout_func` hook, with the engine's
sampled-token logprobs. The TIS ratio exp(trainer - engine logprob), capped at `tis_cap`, applies
only when `use_vllm` is on (trl/trainer/grpo_trainer.py; the stage takes the trainer's side from
the training forward, stages/rl_tis.py); nothing else reads `use_vllm` once `rollout_func` is set,
so the HF and IPC engines switch it on after TRL's init.
"""

from __future__ import annotations

import os
from pathlib import Path

from posttrain.launch import is_main_process
from posttrain.rollout.producer import RolloutProducer, rollout_batch, trim_log


def server_backend(url: str) -> str | None:
    """The vLLM server's weight-transfer backend (nccl | ipc), from its /server_info."""
    from posttrain.rollout.engines import server_config
    return (server_config(url).get("weight_transfer_config") or {}).get("backend")


def prepare_args(args, st) -> None:
    """GRPOConfig for async: TIS always (it is the lag correction); TRL builds its own vLLM client
    only for NCCL, the transport it drives (`VLLMGeneration.sync_weights`)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
    args.vllm_importance_sampling_correction = True
    args.use_vllm = st.engine == "vllm" and server_backend(st.vllm_server_base_url) == "nccl"


def from_producer(prompts, trainer) -> dict:
    """TRL `rollout_func`: the groups `_round` took from the producer for these prompts."""
    groups = trainer._groups
    assert len(prompts) == sum(len(gr.completion_ids) for gr in groups), "rollout batch out of step with prompts"
    return rollout_batch(groups)


def attach(trainer, st, queue, rows: list[dict], tok, log_dir: Path, resume_step: int, max_tokens_fn=None,
           ignore_eos: bool = False) -> RolloutProducer:
    """Build the engine and producer and hang them on the trainer. `log_dir` gets rollouts.jsonl:
    one line per trained group (step, prompt, policy version); a resume drops the rolled-back lines.
    `max_tokens_fn(idx, n)` / `ignore_eos`: per-completion lengths (benchmarks)."""
    from posttrain.model.load import end_token_ids
    from posttrain.rollout.engines import HFEngine, VLLMServerEngine
    if st.engine == "hf":
        # every end token (<|im_end|> and end of text), as the stage gives TRL's own generation
        eos = sorted({tok.eos_token_id, *end_token_ids(tok), *_as_list(trainer.model.generation_config.eos_token_id)}
                     - {None})
        engine = HFEngine(trainer.model, tok.pad_token_id, eos, st.temperature, st.max_completion_length)
    else:
        engine = VLLMServerEngine(st.vllm_server_base_url, st.temperature, st.max_completion_length,
                                  trl_generation=getattr(trainer, "vllm_generation", None), ignore_eos=ignore_eos,
                                  stop_token_ids=end_token_ids(tok),
                                  is_main=is_main_process(),
                                  world_size=trainer.accelerator.num_processes)
    if not trainer.use_vllm:
        trainer.use_vllm = True
        trainer._last_loaded_step = -1
    cache: dict[int, list[int]] = {}

    def tokenize(i: int) -> list[int]:
        if i not in cache:
            cache[i] = list(tok.apply_chat_template(rows[i]["prompt"], tokenize=True, return_dict=False,
                                                    add_generation_prompt=True))
        return cache[i]
    log = Path(log_dir) / ("rollouts.jsonl" if queue.rank == 0 else f"rollouts.rank{queue.rank}.jsonl")
    trim_log(log, resume_step)
    a = trainer.args
    want = a.per_device_train_batch_size * a.steps_per_generation // trainer.num_generations  # groups per process
    producer = RolloutProducer(engine, queue, tokenize, trainer.num_generations, want, st.async_steps,
                               st.weight_sync_steps, seed=st.seed, log_path=log, max_tokens_fn=max_tokens_fn,
                               lookahead=st.async_lookahead)
    trainer.rollouts = producer
    return producer


def _as_list(x):
    return [] if x is None else x if isinstance(x, list) else [x]
