"""Recipe loading: every shipped recipe validates; each kind of mistake is one line naming file and field."""

from pathlib import Path

import pytest

from posttrain.recipe import DPOStage, GRPOStage, RecipeError, SFTStage, load_recipe

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = load_recipe(str(path))
    assert r.stages, path
    for name, st in r.stages.items():
        assert isinstance(st, {"sft": SFTStage, "dpo": DPOStage, "grpo": GRPOStage}[st.kind]), name


def test_builtin_name_resolves_and_overrides_apply(monkeypatch):
    monkeypatch.chdir(ROOT)
    r = load_recipe("tiny", ["stages.sft.learning_rate=1e-4", "seed=7"])
    assert r.stages["sft"].learning_rate == 1e-4 and r.cfg.seed == 7
    assert r.source.endswith("recipes/tiny.yaml")


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return str(p)


GOOD = """
name: t
stages:
  sft:
    kind: sft
    mix: {mix}
    learning_rate: 1.0e-3
"""


@pytest.fixture
def mix(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("sources:\n  - path: builtin:arith_think\n    count: 4\n")
    return str(m)


@pytest.mark.parametrize("mutate, expect", [
    (lambda s: s + "bogus_field: 1\n", "bogus_field"),
    (lambda s: s.replace("learning_rate: 1.0e-3", "learning_rate: fast"), "stages.sft.learning_rate"),
    (lambda s: s.replace("learning_rate: 1.0e-3", "learning_rate: 1.0e-3\n    beta: 5"), "stages.sft.beta"),
    (lambda s: s.replace("kind: sft", "kind: ppo"), "stages.sft.kind"),
    (lambda s: s.replace("    learning_rate: 1.0e-3\n", ""), "stages.sft.learning_rate"),
    (lambda s: s + "chat_template: nope\n", "chat_template"),
    (lambda s: s.replace("learning_rate: 1.0e-3", "learning_rate: 1.0e-3\n    init_from: dpo"), "stages.sft.init_from"),
    (lambda s: s + "exports:\n  - stage: rl\n", "exports.0.stage"),
    (lambda s: s.replace("kind: sft", "kind: grpo\n    vllm_mode: remote"), "stages.sft.vllm_mode"),
    (lambda s: s.replace("kind: sft", "kind: grpo\n    engine: vllm\n    vllm_mode: server"),
     "stages.sft.vllm_server_base_url"),
    (lambda s: s + "chat_template_system: hi\n", "chat_template_system"),  # olmo-instruct has no default turn
    (lambda s: s.replace("kind: sft", "kind: grpo\n    prompts_per_step: 6\n    mini_batches: 4"),
     "stages.sft.mini_batches"),
    (lambda s: s.replace("learning_rate: 1.0e-3", "learning_rate: 1.0e-3\n    adam_beta2: 1.5"), "adam_beta2"),
])
def test_mistakes_are_one_line_naming_file_and_field(tmp_path, mix, mutate, expect):
    path = write(tmp_path, mutate(GOOD.format(mix=mix)))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "\n" not in msg and path in msg and expect in msg, msg


def test_missing_mix_file_and_missing_recipe(tmp_path):
    path = write(tmp_path, GOOD.format(mix="data_mixes/none.yaml"))
    with pytest.raises(RecipeError, match=r"stages\.sft\.mix: data mix file not found"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="no such recipe"):
        load_recipe("not-a-recipe")


def test_bad_override_and_unknown_mix_stage(tmp_path, mix):
    path = write(tmp_path, GOOD.format(mix=mix))
    with pytest.raises(RecipeError, match="must look like key=value"):
        load_recipe(path, ["stages.sft.learning_rate"])
    with pytest.raises(RecipeError, match="stages.sft.learning_rate"):
        load_recipe(path, ["stages.sft.learning_rate=abc"])
    with pytest.raises(RecipeError, match="no stage named 'dpo'"):
        load_recipe(path, mixes={"dpo": mix})
    assert load_recipe(path, mixes={"sft": mix}).stages["sft"].mix == mix
