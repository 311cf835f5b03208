"""Pipeline: skip when up to date, rerun on change, resume after a kill, never a half stage that looks done."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.pipeline import Pipeline, PipelineError
from posttrain.rundir import RunDir, read_done, write_json
from posttrain.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent

RECIPE = """
name: t
output_dir: {out}
chat_template: olmo-think
stages:
  sft:
    kind: sft
    mix: {mix}
    learning_rate: 3.0e-3
    max_steps: {steps}
    max_length: 160
    batch_tokens: 1280
    micro_batch_size: 8
    logging_steps: 1
    save_steps: 2
    eval: {{mix: {mix}, max_examples: 4, max_new_tokens: 8, batch_size: 4}}
  sft2:
    kind: sft
    init_from: sft
    mix: {mix}
    learning_rate: 1.0e-3
    max_steps: 2
    max_length: 160
    batch_tokens: 1280
    micro_batch_size: 8
    eval: {{max_examples: 0}}
"""


@pytest.fixture
def recipe_file(tmp_path):
    mix = tmp_path / "mix.yaml"
    mix.write_text("sources:\n  - path: builtin:arith_think\n    count: 64\n")
    def make(steps=3):
        p = tmp_path / "r.yaml"
        p.write_text(RECIPE.format(out=tmp_path / "run", mix=mix, steps=steps))
        return str(p)
    return make


def test_run_then_skip_then_rerun_on_override(recipe_file, tmp_path):
    path = recipe_file()
    res = Pipeline(load_recipe(path)).run(only="sft")
    assert res[0].action == "ran"
    out = tmp_path / "run" / "sft"
    for f in ("DONE", "config.yaml", "manifest.json", "metrics.jsonl", "evals.json", "model/config.json",
              "model/tokenizer_config.json"):
        assert (out / f).exists(), f
    assert not (out / "trainer").exists()  # optimizer state is dropped once done
    done = read_done(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train"]["rows"] == 64 and len(done.key) == 16
    assert any("loss" in json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())

    # weights get the mode of the files beside them (safetensors alone writes 0600)
    assert (out / "model" / "model.safetensors").stat().st_mode & 0o777 == (out / "model" / "config.json").stat().st_mode & 0o777
    trash = tmp_path / "run" / ".sft.old-123"  # what a kill between the swap's renames leaves
    (trash / "model").mkdir(parents=True)

    t = time.time()
    again = Pipeline(load_recipe(path)).run(only="sft")
    assert again[0].action == "skipped" and time.time() - t < 5
    assert not trash.exists()
    assert read_done(out).key == done.key

    changed = Pipeline(load_recipe(path, ["stages.sft.learning_rate=1e-4"]))
    plan = {p.name: p.action for p in changed.plan()}
    assert plan == {"sft": "run", "sft2": "run"}
    assert changed.run(only="sft")[0].action == "ran"
    assert read_done(out).key != done.key


def test_dry_plan_and_missing_input(recipe_file, tmp_path):
    pipe = Pipeline(load_recipe(recipe_file()))
    assert [p.action for p in pipe.plan()] == ["run", "run"]
    assert not (tmp_path / "run").exists()  # planning writes nothing
    blocked = pipe.plan(only="sft2")[0]
    assert blocked.action == "blocked"
    with pytest.raises(PipelineError, match=r"starts from 'sft'.*--stage sft"):
        pipe.run(only="sft2")


def test_crash_mid_rerun_keeps_the_finished_output(recipe_file, tmp_path, monkeypatch):
    path = recipe_file()
    Pipeline(load_recipe(path)).run(only="sft")
    out = tmp_path / "run" / "sft"
    before = read_done(out)
    weights = (out / "model" / "model.safetensors").read_bytes()

    import posttrain.stages.sft as sft
    def boom(ctx):
        (ctx.work_dir / "model").mkdir(parents=True)
        raise RuntimeError("killed")
    monkeypatch.setattr(sft, "run", boom)
    with pytest.raises(RuntimeError):
        Pipeline(load_recipe(path, ["stages.sft.learning_rate=1e-4"])).run(only="sft")
    assert read_done(out) == before and (out / "model" / "model.safetensors").read_bytes() == weights
    pipe = Pipeline(load_recipe(path, ["stages.sft.learning_rate=1e-4"]))
    assert pipe.status("sft", pipe.plan()[0].key) == "stale"


def test_resume_after_kill(recipe_file, tmp_path):
    path = recipe_file(steps=12)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", "run", path, "--stage", "sft"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = tmp_path / "run" / ".work"
    deadline = time.time() + 240
    while not list(work.glob("sft-*/trainer/checkpoint-4")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(work.glob("sft-*/trainer/checkpoint-*")), "no checkpoint was written before the kill"
    assert read_done(tmp_path / "run" / "sft") is None  # nothing looks done

    pipe = Pipeline(load_recipe(path))
    assert pipe.plan(only="sft")[0].action == "resume"
    res = pipe.run(only="sft")
    assert res[0].action == "resumed" and res[0].summary.steps == 12
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 1 and max(steps) == 12
    assert read_done(tmp_path / "run" / "sft").key == pipe.plan(only="sft")[0].key


def test_eval_logging_and_save_settings_never_retrain_and_v1_runs_stay_done(recipe_file, tmp_path):
    path = recipe_file()
    pipe = Pipeline(load_recipe(path))
    pipe.run(only="sft")
    out = tmp_path / "run" / "sft"
    done = read_done(out)
    weights = (out / "model" / "model.safetensors").read_bytes()
    quiet = ["stages.sft.eval.max_examples=2", "stages.sft.eval.max_new_tokens=4", "stages.sft.logging_steps=3",
             "stages.sft.save_steps=1"]
    other = Pipeline(load_recipe(path, quiet))
    assert other.plan(only="sft")[0].action == "skip"
    # and the claim behind it: forced to train with those settings, the weights come out the same
    assert other.run(only="sft", force=True)[0].action == "ran"
    assert read_done(out).key == done.key and (out / "model" / "model.safetensors").read_bytes() == weights
    assert json.loads((out / "evals.json").read_text())["n"] == 2

    # A run finished before key v2: its DONE holds the v1 key of the same settings, and an export made from it.
    rd = RunDir(tmp_path / "run")
    v1 = pipe.plan(only="sft")[0].legacy_key
    rd.write_done(out, dataclasses.replace(read_done(out), key=v1, key_version=1))
    rd.export("think").mkdir(parents=True)
    write_json(rd.export("think") / "export.json", {"stage": "sft", "kind": "think", "stage_key": v1})
    assert [p.action for p in Pipeline(load_recipe(path)).plan()] == ["skip", "run"]
    assert Pipeline(load_recipe(path)).run(only="sft")[0].action == "skipped"
    assert (read_done(out).key, read_done(out).key_version) == (done.key, 2)
    assert json.loads((rd.export("think") / "export.json").read_text())["stage_key"] == done.key
    # a v1 DONE of other settings is stale, as before
    rd.write_done(out, dataclasses.replace(read_done(out), key="0" * 16, key_version=1))
    assert Pipeline(load_recipe(path)).plan(only="sft")[0].action == "run"
