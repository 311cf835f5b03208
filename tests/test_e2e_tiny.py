"""The whole tiny recipe, shortened: SFT -> DPO -> GRPO through the pipeline, on CPU."""

import json
from pathlib import Path

from posttrain.pipeline import Pipeline
from posttrain.rundir import read_done
from posttrain.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_recipe_end_to_end_short(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    short = [f"output_dir={tmp_path}/run", "stages.sft.max_steps=6", "stages.dpo.max_steps=2", "stages.rl.max_steps=2",
             "stages.rl.prompts_per_step=4", "stages.rl.micro_batch_size=32", "stages.rl.max_completion_length=24"]
    short += [f"stages.{s}.eval.max_examples=8" for s in ("sft", "dpo", "rl")]
    recipe = load_recipe("tiny", short)
    results = Pipeline(recipe).run()
    assert [r.stage for r in results] == ["sft", "dpo", "rl"] and all(r.action == "ran" for r in results)
    for stage in ("sft", "dpo", "rl"):
        d = tmp_path / "run" / stage
        assert read_done(d).stage == stage
        assert json.loads((d / "evals.json").read_text())["n"] == 8
        assert (d / "model" / "model.safetensors").is_file()
    rl = [json.loads(x) for x in (tmp_path / "run" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward" in r for r in rl) and any("active/rounds" in r for r in rl)
    dpo = [json.loads(x) for x in (tmp_path / "run" / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in dpo)
    again = Pipeline(load_recipe("tiny", short)).run()
    assert all(r.action == "skipped" for r in again)
