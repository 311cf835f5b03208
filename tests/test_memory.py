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
    assert stage_steps(sft, rows=640) == (int(640 * sft.num_epochs) // 64, 64 * 32768)
    assert stage_steps(dpo, rows=None) == (None, 128 * 2 * 16384)


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
