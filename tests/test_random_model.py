"""Throughput runs without a checkpoint: `random:` models, the padded tiny tokenizer, synthetic data."""

import statistics

from posttrain.data.builtin import load_builtin
from posttrain.memory import config_params, model_config
from posttrain.model.load import load_model, load_tokenizer, param_count, random_config
from posttrain.model.tiny import build_tiny_model
from posttrain.recipe import load_recipe

BENCH = "benchmarks/recipes/olmo-hybrid-7b-throughput.yaml"


def test_random_7b_has_the_published_parameter_count():
    assert config_params(random_config("random:olmo-hybrid-7b")) == 7_430_870_688
    assert config_params(model_config("random:olmo-hybrid-7b")[0]) == 7_430_870_688


def test_random_model_from_a_config_dir_is_seeded(tmp_path):
    build_tiny_model().save_pretrained(tmp_path / "m")
    a = load_model(f"random:{tmp_path / 'm'}", "float32", seed=1)
    b = load_model(f"random:{tmp_path / 'm'}", "float32", seed=1)
    c = load_model(f"random:{tmp_path / 'm'}", "float32", seed=2)
    assert param_count(a) == param_count(build_tiny_model())
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert (wa == wb).all() and not (wa == wc).all()
    # vLLM must start from a saved copy of these weights, not from the folder that lent its config
    # (or, for a nameless model, the working folder): the 7B GRPO run failed on exactly that.
    from posttrain.rollout.vllm_engine import is_checkpoint_dir
    assert is_checkpoint_dir(str(tmp_path / "m")) and not is_checkpoint_dir(a.name_or_path)


def test_padded_tiny_tokenizer_decodes_every_id():
    tok = load_tokenizer("tiny:300", "olmo-think")
    assert len(tok) == 300
    assert tok.decode([299]) == "<w%d>" % (299 - len(load_tokenizer("tiny", "olmo-think")))
    assert tok("ab").input_ids == load_tokenizer("tiny", "olmo-think")("ab").input_ids


def test_synthetic_data_is_deterministic_and_long():
    chat = load_builtin("synthetic_chat", "train")
    assert chat == load_builtin("synthetic_chat", "train") and len(chat) == 2048
    assert 2500 < statistics.fmean(len(r["messages"][1]["content"]) for r in chat) < 3500
    prefs = load_builtin("synthetic_prefs", "test")
    assert {"prompt", "chosen", "rejected"} <= set(prefs[0])
    assert 600 < statistics.fmean(len(r["chosen"][0]["content"]) for r in prefs) < 950


def test_throughput_recipe_loads():
    r = load_recipe(BENCH)
    assert r.cfg.model.name == "random:olmo-hybrid-7b" and list(r.stages) == ["sft", "dpo", "rl"]
    assert all(st.init_from is None for st in r.stages.values())  # any stage runs alone
