"""Dry-run estimates: memory per GPU and steps, by hand."""

import pytest

from posttrain.memory import GB, config_params, estimate, stage_steps
from posttrain.recipe import load_recipe

N = 1_000_000_000


@pytest.mark.parametrize("zero,gpus,static_bytes", [
    (0, 1, (2 + 2 + 8) * N),              # bf16 weights + grads, fp32 AdamW moments
    (2, 8, 2 * N + (2 + 12) * N / 8),     # weights replicated, grads + fp32 master/moments sharded
    (3, 8, (2 + 2 + 12) * N / 8),         # everything sharded
])
def test_static_memory_by_zero_stage(zero, gpus, static_bytes):
    e = estimate(N, hidden=2048, layers=16, vocab=100_000, tokens=4096, gpus=gpus, zero=zero)
    assert e.weights_gb + e.grads_gb + e.optimizer_gb == pytest.approx(static_bytes / GB)


def test_activations_and_logits():
    e = estimate(N, hidden=1000, layers=10, vocab=50_000, tokens=100, checkpointing=True)
    assert e.logits_gb == pytest.approx(100 * 50_000 * 6 / GB)        # bf16 logits + the loss's fp32 copy
    assert e.activations_gb == pytest.approx((10 * 100 * 1000 * 2 + 100 * 1000 * 34) / GB)
    full = estimate(N, hidden=1000, layers=10, vocab=50_000, tokens=100, checkpointing=False)
    assert full.activations_gb == pytest.approx(10 * 100 * 1000 * 34 / GB)
    assert estimate(N, 1000, 10, 50_000, 100, engine_gb=24.0).total_gb == pytest.approx(e.total_gb + 24.0)


def test_7b_parameter_count_and_steps():
    from transformers import OlmoHybridConfig
    assert config_params(OlmoHybridConfig()) == 7_430_870_688
    r = load_recipe("olmo-hybrid-7b-think")
    sft, dpo = r.stages["sft"], r.stages["dpo"]
    assert stage_steps(sft, rows=640) == (int(640 * sft.num_epochs) // 64, 64 * 32768, [])
    assert stage_steps(dpo, rows=None) == (None, 128 * 2 * 16384, [])


@pytest.mark.parametrize("world", [1, 3])
def test_plan_counts_what_the_stage_runs_and_says_when_sizes_do_not_divide(world, monkeypatch):
    from posttrain.stages.registry import STAGES
    r = load_recipe("tiny", ["stages.sft.batch_tokens=9000", "stages.sft.micro_batch_size=5",
                             "stages.dpo.batch_pairs=30", "stages.rl.micro_batch_size=60", "stages.rl.max_steps=-1"])
    sft, dpo, rl = (r.stages[n] for n in ("sft", "dpo", "rl"))
    geo = STAGES["sft"].geometry(sft, world)
    # 9000 // 256 = 35 rows asked; 5 a micro-batch x world: accumulate 35 // (5 x world)
    assert geo.grad_accum == 35 // (5 * world) and geo.items_per_step == 5 * geo.grad_accum * world
    assert any("not a multiple of max_length" in w for w in geo.warnings)
    assert any("gives" in w for w in geo.warnings) == (35 % (5 * world) != 0)  # 3 devices: 30 rows, not 35
    steps, tokens, warnings = stage_steps(sft, rows=1000, gpus=world)
    batches = -(-1000 // (5 * world))
    assert steps == -(-batches // geo.grad_accum) and tokens == geo.items_per_step * 256 and warnings == geo.warnings
    g = STAGES["grpo"].geometry(rl, world)
    assert g.micro_batch == 56 and any("not a multiple of rollouts_per_prompt" in w for w in g.warnings)
    import posttrain.stages.rl as rl_mod
    monkeypatch.setattr(rl_mod, "world_size", lambda: world)
    args = rl_mod.grpo_config(rl, "/tmp/unused", [1.0])
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (g.micro_batch, g.grad_accum)
    d = STAGES["dpo"].geometry(dpo, world, items_per_micro=16.0)
    assert d.grad_accum == max(1, round(30 / (16 * world)))
    assert STAGES["dpo"].geometry(load_recipe("tiny").stages["dpo"], 1).warnings == []
    assert all(not STAGES[s.kind].geometry(s, 1).warnings for s in load_recipe("tiny").stages.values())


def test_dry_run_prints_estimates_without_data(tmp_path, capsys, monkeypatch):
    from posttrain.cli import main
    mix = tmp_path / "hub.yaml"
    mix.write_text("sources:\n  - path: no-such-org/no-such-dataset\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["run", "tiny", f"output_dir={tmp_path}/run", "--mix", f"sft={mix}", "--dry-run", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "data not resolved here" in out and "ZeRO-3" in out and "total GB/GPU" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("env,stage", [
    ({}, 0),                                                                    # no DeepSpeed: plain / DDP
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, 2),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "recipes/deepspeed/zero3.json"}, 3),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "no/such.json"}, 0),
])
def test_zero_stage_from_what_accelerate_launch_exports(env, stage, monkeypatch):
    from posttrain.launch import zero_stage
    for k in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert zero_stage() == stage


@pytest.mark.parametrize("gpu_gib,env,said", [
    # the 7B SFT throughput recipe on one 80 GB card: it ran out of memory on 2026-12-07
    (80, {}, "sft: the memory estimate is 119.5 GB per GPU (weights, gradients and optimizer 83.0,"),
    (141, {}, None),  # one H200: it ran (peak 107.6 GB)
    (80, {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
     "sft: the memory estimate is 91.8 GB per GPU (weights, gradients and optimizer 55.4,"),  # states halved
    (141, {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, None),
    # one H200 with async RL's `vllm serve` at 0.4 of it (56 GB) already running on the same card
    ((141, 56), {}, "sft: the memory estimate is 119.5 GB per GPU"),
])
def test_a_stage_over_the_gpus_memory_is_warned_about_before_its_model_loads(gpu_gib, env, said, monkeypatch, caplog):
    import torch

    from posttrain.pipeline import Pipeline
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    gpu_gib, others = gpu_gib if isinstance(gpu_gib, tuple) else (gpu_gib, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: ((gpu_gib - others) * GB, gpu_gib * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 0)
    recipe = load_recipe("benchmarks/recipes/olmo-hybrid-7b-throughput.yaml")
    with caplog.at_level("WARNING"):
        Pipeline(recipe)._memory_preflight("sft", recipe.stages["sft"])
    warned = [r.getMessage() for r in caplog.records if "memory estimate" in r.getMessage()]
    assert [w[:len(said)] for w in warned] == ([said] if said else [])
    assert all(("56.0 of them held by other processes" in w) == bool(others) for w in warned)
