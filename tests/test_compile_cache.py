"""Kernel caches where later stages and reruns find them, and the first step's time in metrics.jsonl."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from posttrain.model import compile_cache as cc


@pytest.fixture
def clean_env(monkeypatch):
    for var in (*cc.ENV, "POSTTRAIN_KERNEL_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cc, "_state", {})
    return monkeypatch


@pytest.mark.parametrize("setting, want", [
    ("run", "RUN/kernel_cache"), ("user", "HOME/.cache/posttrain/kernels"), ("DIR/k", "DIR/k"), ("none", None),
])
def test_settings_name_their_directory(clean_env, tmp_path, setting, want):
    clean_env.setenv("HOME", str(tmp_path / "HOME"))
    got = cc.kernel_cache_dir(setting.replace("DIR", str(tmp_path / "DIR")), tmp_path / "RUN")
    assert got == (None if want is None else tmp_path / want)


def test_user_setting_follows_posttrain_then_xdg(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.kernel_cache_dir("user", tmp_path) == tmp_path / "xdg" / "posttrain" / "kernels"
    clean_env.setenv("POSTTRAIN_KERNEL_CACHE", str(tmp_path / "pk"))
    assert cc.kernel_cache_dir("user", tmp_path) == tmp_path / "pk"


def test_use_kernel_cache_points_every_library_there_cold_then_warm(clean_env, tmp_path):
    st = cc.use_kernel_cache("run", tmp_path)
    root = tmp_path / "kernel_cache"
    assert st == {"dir": str(root), "files": 0, "state": "cold"}
    assert {os.environ[v] for v in cc.ENV} == {str(root / s) for s in cc.ENV.values()}
    (root / "triton" / "abc").mkdir()
    (root / "triton" / "abc" / "kernel.cubin").write_bytes(b"x")
    for var in cc.ENV:  # a second stage / rerun in a new process
        clean_env.delenv(var)
    assert cc.use_kernel_cache("run", tmp_path)["state"] == "warm"
    assert cc.cache_state()["files"] == 1
    assert "warm: 1 files" in cc.warmup_message(cc.cache_state())


def test_the_recipe_setting_overrides_a_variable_torch_set_itself(clean_env, tmp_path):
    clean_env.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torch-default"))  # torch does this on import
    cc.use_kernel_cache("run", tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "kernel_cache" / "inductor")


def test_none_leaves_the_environment_alone(clean_env, tmp_path):
    clean_env.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    assert cc.use_kernel_cache("none", tmp_path)["state"] == "default"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")
    assert not any(v in os.environ for v in cc.ENV if v != "TRITON_CACHE_DIR")
    assert "default dirs" in cc.warmup_message(cc.cache_state())


def test_recipe_field_is_not_part_of_a_stage_key(tmp_path):
    """The cache never changes results: changing it must not make finished stages stale."""
    from posttrain.pipeline import Pipeline
    from posttrain.recipe import load_recipe
    a = Pipeline(load_recipe("tiny", [f"output_dir={tmp_path}"]))
    b = Pipeline(load_recipe("tiny", [f"output_dir={tmp_path}", "kernel_cache=run"]))
    assert b.recipe.cfg.kernel_cache == "run"
    assert a.key("sft", None) == b.key("sft", None)


def test_first_step_time_goes_to_metrics(clean_env, tmp_path):
    from posttrain.metrics import MetricsWriter, ThroughputCallback, read_metrics
    from posttrain.model.tiny import build_tiny_model
    cc.use_kernel_cache("run", tmp_path)
    cb = ThroughputCallback(MetricsWriter(tmp_path / "m.jsonl"), "sft", build_tiny_model(seed=0).config, 64)
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    for step in (1, 2, 3):
        cb.on_step_begin(None, state, None)
        state.global_step = step
        cb.on_step_end(None, state, None)
    recs = read_metrics(tmp_path / "m.jsonl")
    assert len(recs) == 1 and recs[0]["step"] == 1 and recs[0]["kernel_cache"] == "cold"
    assert recs[0]["first_step_s"] >= 0
    json.dumps(recs)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from stage_metrics import summarize
    assert summarize(recs + [{"step": 2, "loss": 1.0}], gpus=1, warmup=0)["first_step_s"] == recs[0]["first_step_s"]


def test_an_unusable_dir_falls_back_to_the_libraries_defaults_and_says_why(clean_env, tmp_path, caplog):
    """The cache only saves time: a read-only $HOME or a file in the way must not end a GPU stage."""
    (tmp_path / "file").write_text("x")
    clean_env.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    with caplog.at_level("WARNING", logger="posttrain"):
        st = cc.use_kernel_cache(str(tmp_path / "file" / "kc"), tmp_path)
    assert st["state"] == "default" and st["dir"] is None and "Not a directory" in st["problem"]
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")  # untouched, not half-moved
    assert not any(v in os.environ for v in cc.ENV if v != "TRITON_CACHE_DIR")
    assert "cannot use" in caplog.text and "unusable" in cc.warmup_message(cc.cache_state())
    assert cc.use_kernel_cache("run", tmp_path)["state"] == "cold"  # a usable one afterwards: no stale problem
    assert "problem" not in cc.cache_state()


def test_a_relative_dir_is_made_absolute_and_vllm_compiles_there_too(clean_env, tmp_path):
    """vLLM's engine runs in other working dirs and sets Triton's and inductor's dirs under its own root."""
    clean_env.chdir(tmp_path)
    cc.use_kernel_cache("kc", tmp_path)
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "kc" / "vllm")
    assert all(Path(os.environ[v]).is_absolute() and Path(os.environ[v]).is_dir() for v in cc.ENV)


def test_the_warmup_line_names_only_what_compiles_here(monkeypatch):
    from posttrain.model import kernels
    monkeypatch.setattr(kernels, "fla_problem", lambda device=None: None)
    monkeypatch.setattr(kernels, "flash_attn_available", lambda: False)
    for hopper_old_triton, want in ((True, "fla GDN/conv/norm, tilelang's GDN backward, flex attention"),
                                    (False, "fla GDN/conv/norm, flex attention")):
        monkeypatch.setattr(kernels, "tilelang_needed", lambda device=None, v=hopper_old_triton: v)
        assert cc.compiling_now() == want
    monkeypatch.setattr(kernels, "flash_attn_available", lambda: True)
    assert cc.compiling_now() == "fla GDN/conv/norm"
