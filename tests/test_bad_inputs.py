"""Bad input a user can give (recipes, data mixes, overrides, CLI flags): each one is a single
`posttrain: error:` line naming the file and the field or row, exit code 2, before any model
loads, and nothing is written."""

import json
import os
from pathlib import Path

import pytest
import yaml

import posttrain.pipeline
from posttrain.cli import main

USER = {"role": "user", "content": "What is 2 + 3?"}
ANSWER = {"role": "assistant", "content": "The answer is 5."}
SFT_ROWS = [{"messages": [USER, ANSWER]}, {"messages": [USER, {"role": "assistant", "content": "5"}]}]
DPO_ROWS = [{"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"},
            {"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "3"}]
RL_ROWS = [{"prompt": "What is 2 + 3?", "ground_truth": "5"}, {"prompt": "What is 1 + 1?", "ground_truth": "2"}]
# Dolci shapes that must pass: tool turns with `environment`, list ground truths, verifier lists.
DOLCI_SFT = {"messages": [USER, {"role": "assistant", "content": "", "function_calls": "add(2, 3)"},
                          {"role": "environment", "content": "5"}, ANSWER]}
DOLCI_RL = {"prompt": "Say hi without commas.", "ground_truth": ['{"instruction_id_list": []}'], "verifier": ["ifeval"]}


def recipe(tmp: Path) -> dict:
    return {"name": "t", "output_dir": str(tmp / "run"), "model": {"name": "tiny"}, "stages": {
        "sft": {"kind": "sft", "mix": str(tmp / "sft.yaml"), "learning_rate": 1e-3, "max_length": 64,
                "batch_tokens": 256, "eval": {"mix": str(tmp / "eval.yaml")}},
        "dpo": {"kind": "dpo", "init_from": "sft", "mix": str(tmp / "dpo.yaml"), "learning_rate": 1e-4,
                "max_length": 64, "batch_pairs": 2},
        "rl": {"kind": "grpo", "init_from": "dpo", "mix": str(tmp / "rl.yaml"), "learning_rate": 1e-5,
               "rewards": [{"name": "math"}]}},
        "exports": [{"stage": "rl", "kind": "think"}]}


def set_path(d: dict, dotted: str, value) -> dict:
    *head, last = dotted.split(".")
    for k in head:
        d = d[int(k)] if isinstance(d, list) else d.setdefault(k, {})
    if value is DELETE:
        del d[last]
    else:
        d[last] = value
    return d


DELETE = object()
R = "recipe.yaml"
# (id, what to change, extra argv, text the one-line error must contain)
CASES = [
    # recipe fields: every numeric range, names and references
    ("max_length_0", {"stages.sft.max_length": 0}, [], [R, "stages.sft.max_length: must be >= 1, got 0"]),
    ("max_length_negative", {"stages.dpo.max_length": -5}, [], [R, "stages.dpo.max_length: must be >= 1, got -5"]),
    ("lr_nan", {"stages.sft.learning_rate": float("nan")}, [], [R, "stages.sft.learning_rate: must be > 0"]),
    ("lr_zero", {"stages.sft.learning_rate": 0.0}, [], [R, "stages.sft.learning_rate"]),
    ("epochs_0", {"stages.sft.num_epochs": 0}, [], [R, "stages.sft.num_epochs: must be > 0"]),
    ("max_steps_0", {"stages.sft.max_steps": 0}, [], [R, "stages.sft.max_steps: must be >= 1 (or -1)"]),
    ("micro_batch_0", {"stages.dpo.micro_batch_size": 0}, [], [R, "stages.dpo.micro_batch_size"]),
    ("warmup_1", {"stages.sft.warmup_ratio": 1.0}, [], [R, "stages.sft.warmup_ratio"]),
    ("weight_decay_neg", {"stages.sft.weight_decay": -0.1}, [], [R, "stages.sft.weight_decay: must be >= 0"]),
    ("save_steps_0", {"stages.sft.save_steps": 0}, [], [R, "stages.sft.save_steps"]),
    ("logging_steps_neg", {"stages.rl.logging_steps": -1}, [], [R, "stages.rl.logging_steps"]),
    ("seed_neg", {"seed": -1}, [], [R, "seed: must be >= 0"]),
    ("stage_seed_huge", {"stages.sft.seed": 2**40}, [], [R, "stages.sft.seed"]),
    ("eval_tokens_0", {"stages.sft.eval.max_new_tokens": 0}, [], [R, "stages.sft.eval.max_new_tokens"]),
    ("eval_batch_0", {"stages.sft.eval.batch_size": 0}, [], [R, "stages.sft.eval.batch_size"]),
    ("batch_tokens_neg", {"stages.sft.batch_tokens": -8}, [], [R, "stages.sft.batch_tokens"]),
    ("dpo_beta_0", {"stages.dpo.beta": 0.0}, [], [R, "stages.dpo.beta: must be > 0"]),
    ("batch_pairs_0", {"stages.dpo.batch_pairs": 0}, [], [R, "stages.dpo.batch_pairs"]),
    ("rollouts_1", {"stages.rl.rollouts_per_prompt": 1}, [], [R, "stages.rl.rollouts_per_prompt: must be >= 2"]),
    ("prompts_per_step_0", {"stages.rl.prompts_per_step": 0}, [], [R, "stages.rl.prompts_per_step"]),
    ("temperature_0", {"stages.rl.temperature": 0.0}, [], [R, "stages.rl.temperature"]),
    ("completion_len_0", {"stages.rl.max_completion_length": 0}, [], [R, "stages.rl.max_completion_length"]),
    ("grpo_beta_neg", {"stages.rl.beta": -1.0}, [], [R, "stages.rl.beta"]),
    ("tis_cap_0", {"stages.rl.tis_cap": 0.0}, [], [R, "stages.rl.tis_cap"]),
    ("skip_solved_0", {"stages.rl.skip_solved_rate": 0.0}, [], [R, "stages.rl.skip_solved_rate"]),
    ("vllm_mem_1_5", {"stages.rl.vllm_gpu_memory_utilization": 1.5}, [], [R, "stages.rl.vllm_gpu_memory_utilization"]),
    ("epsilon_high_below", {"stages.rl.epsilon_high": 0.1}, [], [R, "stages.rl.epsilon_high: 0.1 is below epsilon"]),
    ("no_rewards", {"stages.rl.rewards": []}, [], [R, "stages.rl.rewards: a GRPO stage needs at least one reward"]),
    ("unknown_reward", {"stages.rl.rewards": [{"name": "mth"}]}, [], [R, "stages.rl.rewards.0: unknown reward 'mth'"]),
    ("reward_weight_text", {"stages.rl.rewards": [{"name": "math", "weight": "high"}]}, [],
     [R, "stages.rl.rewards.0.weight: must be a finite number"]),
    ("stage_named_exports", {"stages.exports": {"kind": "sft", "mix": "{tmp}/sft.yaml", "learning_rate": 1e-3}}, [],
     [R, "stages.exports: a stage name is a directory"]),
    ("stage_name_with_dot", {"stages.a/b": {"kind": "sft", "mix": "{tmp}/sft.yaml", "learning_rate": 1e-3}}, [],
     [R, "stages.a/b: a stage name"]),
    ("run_name_path", {"name": "../x", "output_dir": DELETE}, [], [R, "name: '../x' names the output dir"]),
    ("init_from_unknown", {"stages.dpo.init_from": "sfx"}, [], [R, "stages.dpo.init_from: 'sfx' is not an earlier stage"]),
    ("init_from_later", {"stages.sft.init_from": "rl"}, [], [R, "stages.sft.init_from: 'rl' is not an earlier stage"]),
    ("export_unknown_stage", {"exports": [{"stage": "rk", "kind": "think"}]}, [], [R, "exports.0.stage: no stage named 'rk'"]),
    ("two_exports_one_dir", {"exports": [{"stage": "rl", "kind": "think"}, {"stage": "dpo", "kind": "think"}]}, [],
     [R, "exports.1: writes exports/think, as exports.0 does"]),
    ("model_dir_missing", {"model.name": "./models/nope"}, [], [R, "model.name: no such directory: ./models/nope"]),
    ("tokenizer_tiny_x", {"model.tokenizer": "tiny:x"}, [], [R, "model.tokenizer: tiny:N needs a vocabulary size"]),
    ("output_dir_is_a_file", {"output_dir": "{tmp}/sft.jsonl"}, [], [R, "output_dir: ", "exists and is not a directory"]),
    ("vllm_server_url_no_scheme", {"stages.rl.engine": "vllm", "stages.rl.vllm_mode": "server",
                                   "stages.rl.vllm_server_base_url": "localhost:8000"}, [],
     [R, "stages.rl.vllm_server_base_url: must be http(s)://HOST[:PORT], got 'localhost:8000'"]),
    ("vllm_server_url_bad_port", {"stages.rl.engine": "vllm", "stages.rl.vllm_mode": "server",
                                  "stages.rl.vllm_server_base_url": "http://127.0.0.1:80000"}, [],
     [R, "stages.rl.vllm_server_base_url: must be http(s)://HOST[:PORT], got 'http://127.0.0.1:80000'"]),
    ("server_url_on_the_hf_engine", {"stages.rl.engine": "hf", "stages.rl.vllm_server_base_url": "http://127.0.0.1:8000"},
     [], [R, "stages.rl.engine: hf generates in the trainer's process"]),
    ("kernel_cache_is_a_file", {"kernel_cache": "{tmp}/sft.jsonl"}, [], [R, "kernel_cache: ", "exists and is not a directory"]),
    ("kernel_cache_under_a_file", {"kernel_cache": "{tmp}/sft.jsonl/kernels"}, [],
     [R, "kernel_cache: cannot create ", "sft.jsonl: Not a directory"]),
    ("kernel_cache_false", {"kernel_cache": False}, [], [R, "kernel_cache: 'False' is not user | run | none"]),
    ("kernel_cache_empty", {"kernel_cache": ""}, [], [R, "kernel_cache: '' is not user | run | none"]),
    ("kernel_cache_upper_none", {"kernel_cache": "None"}, [], [R, "kernel_cache: 'None' is not user | run | none"]),
    ("kernel_cache_unwritable", {"kernel_cache": "/proc"}, [], [R, "kernel_cache: cannot write to /proc"]),
    ("export_out_is_a_file", {"exports": [{"stage": "rl", "kind": "think", "out": "{tmp}/sft.jsonl"}]}, [],
     [R, "exports.0.out: ", "exists and is not a directory"]),
    ("chat_template_missing", {"chat_template": "nope.jinja"}, [], [R, "chat_template: 'nope.jinja' is neither"]),
    ("dtype_unknown", {"model.dtype": "fp8"}, [], [R, "model.dtype: must be float32 or bfloat16"]),
    ("kind_unknown", {"stages.sft.kind": "ppo"}, [], [R, "stages.sft.kind: must be one of"]),
    ("missing_lr", {"stages.sft.learning_rate": DELETE}, [], [R, "stages.sft.learning_rate: required field is missing"]),
    ("duplicate_stage", "DUPLICATE", [], [R, "line ", "duplicate key sft"]),
    # overrides
    ("override_unknown_stage", {}, ["stages.sfx.learning_rate=1e-5"],
     [R, "override stages.sfx.learning_rate: no stage named 'sfx' (stages: sft, dpo, rl)"]),
    ("override_max_length_0", {}, ["stages.sft.max_length=0"], [R, "stages.sft.max_length: must be >= 1, got 0"]),
    ("override_unknown_field", {}, ["stages.sft.nope=1"], [R, "stages.sft.nope"]),
    ("override_wrong_type", {}, ["stages.sft.max_length=long"], [R, "stages.sft.max_length"]),
    ("override_no_equals", {}, ["stages.sft.max_length"], [R, "must look like key=value"]),
    # CLI flags
    ("flag_mix_no_path", {}, ["--mix", "sft"], ["--mix sft: expected STAGE=PATH"]),
    ("flag_mix_empty_path", {}, ["--mix", "sft="], ["--mix sft=: expected STAGE=PATH"]),
    ("flag_mix_unknown_stage", {}, ["--mix", "sfx={tmp}/sft.yaml"], [R, "--mix sfx=...: no stage named 'sfx'"]),
    ("flag_mix_missing_file", {}, ["--mix", "sft={tmp}/nope.yaml"], [R, "stages.sft.mix: data mix file not found"]),
    ("flag_stage_unknown", {}, ["--stage", "sfx"], [R, "--stage sfx: no such stage"]),
    ("flag_from_unknown", {}, ["--from", "dp"], [R, "--from dp: no such stage"]),
    ("flag_gpus_0", {}, ["--dry-run", "--gpus", "0"], ["--gpus 0: must be > 0"]),
    ("flag_gpu_gb_neg", {}, ["--dry-run", "--gpu-gb", "-1"], ["--gpu-gb -1.0: must be > 0"]),
    # data mixes: rows for their stage kind, empty mixes, mix settings
    ("sft_ends_with_user", {"sft.jsonl": [SFT_ROWS[0], {"messages": [ANSWER, USER]}]}, [],
     ["sft.yaml: sources.0", "row 1: messages: last turn is 'user', not the assistant's"]),
    ("sft_empty_last_answer", {"sft.jsonl": [{"messages": [USER, ANSWER, USER, {"role": "assistant", "content": " "}]}]},
     [], ["sft.yaml: sources.0", "row 0: messages: last assistant turn is empty"]),
    ("dpo_row_missing_rejected", {"dpo.jsonl": [DPO_ROWS[0], {"prompt": "q", "chosen": "a"}]}, [],
     ["dpo.yaml: sources.0", "row 1: its columns (chosen, prompt) make it a 'prompt' row"]),
    ("dpo_first_row_missing_rejected", {"dpo.jsonl": [{"prompt": "q", "chosen": "a"}, DPO_ROWS[0]]}, [],
     ["dpo.yaml: sources.0", "row 0: its columns (chosen, prompt) make it a 'prompt' row"]),
    ("dpo_same_answers", {"dpo.jsonl": [DPO_ROWS[0], {"prompt": "q", "chosen": "a", "rejected": "a"}]}, [],
     ["dpo.yaml: sources.0", "row 1: chosen and rejected are the same"]),
    ("dpo_empty_chosen", {"dpo.jsonl": [{"prompt": "q", "chosen": [], "rejected": "a"}]}, [],
     ["dpo.yaml: sources.0", "row 0: chosen is empty"]),
    ("rl_some_without_truth", {"rl.jsonl": [RL_ROWS[0], {"prompt": "What is 4 + 4?"}]}, [],
     ["rl.yaml: sources.0", "row 1: no ground truth for reward math (column ground_truth)"]),
    ("rl_all_without_truth", {"rl.jsonl": [{"prompt": "a"}, {"prompt": "b"}]}, [],
     ["rl.yaml: sources.0", "row 0: no ground truth for reward math"]),
    ("rl_blank_truth", {"rl.jsonl": [{"prompt": "a", "ground_truth": [" "]}]}, [], ["rl.yaml", "row 0: no ground truth"]),
    ("rl_code_row_without_tests", {"rl.jsonl": RL_ROWS + [{"prompt": "write f", "verifier": "code"}],
                                   "stages.rl.rewards": [{"name": "math"}, {"name": "code"}]}, [],
     ["rl.yaml", "row 2: no ground truth for reward code (column tests or ground_truth)"]),
    ("rl_empty_prompt", {"rl.jsonl": [{"prompt": [{"role": "user", "content": ""}], "ground_truth": "1"}]}, [],
     ["rl.yaml", "row 0: no prompt"]),
    ("rl_given_sft_rows", {"rl.jsonl": SFT_ROWS}, [], ["rl.yaml", "format messages: stages.rl.mix (grpo) needs prompt rows"]),
    ("eval_without_truth", {"eval.jsonl": SFT_ROWS}, [], ["eval.yaml", "row 0: no ground_truth"]),
    ("mix_count_0", {"sft.yaml": {"sources": [{"path": "{tmp}/sft.jsonl", "count": 0}]}}, [],
     ["sft.yaml: resolves to no rows"]),
    ("mix_empty_file", {"sft.jsonl": []}, [], ["sft.yaml: sources.0", "no rows"]),
    ("mix_empty_file_format_set", {"sft.jsonl": [], "sft.yaml": {"format": "messages", "sources": [{"path": "{tmp}/sft.jsonl"}]}},
     [], ["sft.yaml: sources.0", "no usable rows (0 read"]),
    ("mix_all_rows_skipped", {"sft.jsonl": [{"messages": [USER, ANSWER, USER]}],
                              "sft.yaml": {"skip_invalid": True, "sources": [{"path": "{tmp}/sft.jsonl"}]}}, [],
     ["sft.yaml: sources.0", "no usable rows (1 read, 1 invalid: 1 messages: last turn is 'user'"]),
    ("mix_no_sources", {"sft.yaml": {"sources": []}}, [], ["sft.yaml: sources: a mix needs at least one source"]),
    ("mix_count_negative", {"sft.yaml": {"sources": [{"path": "{tmp}/sft.jsonl", "count": -1}]}}, [],
     ["sft.yaml: sources.0: count/fraction must be >= 0"]),
    ("mix_max_chars_0", {"sft.yaml": {"sources": [{"path": "{tmp}/sft.jsonl", "max_chars": 0}]}}, [],
     ["sft.yaml: sources.0.max_chars: must be >= 1"]),
    ("mix_seed_negative", {"sft.yaml": {"seed": -3, "sources": [{"path": "{tmp}/sft.jsonl"}]}}, [], ["sft.yaml: seed"]),
    ("mix_duplicate_key", {"sft.yaml": "seed: 1\nseed: 2\nsources: [{path: x}]\n"}, [], ["sft.yaml: line 2", "duplicate key"]),
    ("mix_source_missing", {"sft.yaml": {"sources": [{"path": "{tmp}/gone.jsonl"}]}}, [],
     ["sft.yaml: sources.0", "file not found"]),
    ("mix_bad_json_line", {"sft.jsonl": json.dumps(SFT_ROWS[0]) + "\n{\"messages\": [}\n"}, [],
     ["sft.yaml: sources.0", "row 1: line 2: not valid JSON"]),
]


def write_inputs(tmp: Path, change) -> Path:
    files = {"sft.jsonl": SFT_ROWS, "dpo.jsonl": DPO_ROWS, "rl.jsonl": RL_ROWS + [DOLCI_RL],
             "eval.jsonl": RL_ROWS}
    mixes = {n: {"sources": [{"path": f"{tmp}/{n}.jsonl"}]} for n in ("sft", "dpo", "rl", "eval")}
    r = recipe(tmp)
    text = None
    for key, value in (change.items() if isinstance(change, dict) else []):
        value = json.loads(json.dumps(value).replace("{tmp}", str(tmp))) if value is not DELETE else value
        if key.endswith(".jsonl"):
            files[key] = value
        elif key.endswith(".yaml"):
            mixes[key[:-5]] = value
        else:
            set_path(r, key, value)
    for name, rows in files.items():
        (tmp / name).write_text(rows if isinstance(rows, str) else "".join(json.dumps(x) + "\n" for x in rows))
    for name, body in mixes.items():
        (tmp / f"{name}.yaml").write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    text = yaml.safe_dump(r, sort_keys=False)
    if change == "DUPLICATE":  # a second `sft:` under stages
        text = text.replace("  dpo:\n", "  sft:\n    kind: sft\n  dpo:\n", 1)
    (tmp / R).write_text(text)
    return tmp / R


def tree(tmp: Path) -> dict:
    return {str(p.relative_to(tmp)): p.stat().st_mtime_ns for p in tmp.rglob("*")}


@pytest.fixture
def no_stage_runs(monkeypatch):
    from posttrain.stages.registry import StageKind

    def refuse(self, ctx):
        raise AssertionError(f"a {self.kind} stage started: validation should have failed first")
    monkeypatch.setattr(StageKind, "run", refuse)


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, dry, tmp_path, capsys, monkeypatch, no_stage_runs):
    name, change, argv, expect = case
    if dry and "--dry-run" in argv:
        pytest.skip("already a dry run")
    monkeypatch.chdir(tmp_path)
    path = write_inputs(tmp_path, change)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    before = tree(tmp_path)
    rc = main(["run", str(path), *argv, *(["--dry-run"] if dry else [])])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("posttrain: error: ") and "\n" not in err, err
    for text in expect:
        assert text in err, err
    assert tree(tmp_path) == before  # nothing written, not even the run dir


def test_valid_inputs_with_dolci_shapes_plan_cleanly(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_inputs(tmp_path, {})
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was changed" in out and not (tmp_path / "run").exists()


def test_row_rules_accept_dolci_shapes():
    from posttrain.data.validate import row_check
    assert row_check("sft")(DOLCI_SFT) is None  # tool call, `environment` turn, then the answer
    rl = {**DOLCI_RL, "prompt": [{"role": "user", "content": DOLCI_RL["prompt"]}]}
    assert row_check("grpo", [{"name": "math"}, {"name": "ifeval"}])(rl) is None
    # routed to ifeval only: the math reward does not need this row's truth
    assert row_check("grpo", [{"name": "math"}])({**rl, "ground_truth": None}) is None
    assert "reward ifeval" in row_check("grpo", [{"name": "ifeval"}])({**rl, "ground_truth": []})
    pair = {"prompt": [USER], "chosen": [ANSWER], "rejected": [{"role": "assistant", "content": "6"}]}
    assert row_check("dpo")(pair) is None


def test_skip_invalid_drops_and_counts_per_reason(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = RL_ROWS + [{"prompt": "a"}, {"prompt": "b"}, {"prompt": [], "ground_truth": "1"}]
    path = write_inputs(tmp_path, {"rl.jsonl": rows,
                                   "rl.yaml": {"skip_invalid": True, "sources": [{"path": "{tmp}/rl.jsonl"}]}})
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dropped 3 invalid rows (2: no ground truth for reward math (column ground_truth); 1: prompt is empty)" in out
    assert main(["mix", str(tmp_path / "rl.yaml"), "--stage-kind", "grpo"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 invalid rows: no ground truth for reward math" in out and "rows 2," in out


@pytest.mark.parametrize("kind,rows,expect", [
    ("sft", [{"messages": [USER, ANSWER, USER]}], "row 0: messages: last turn is 'user'"),
    ("dpo", [{"prompt": "q", "chosen": "a", "rejected": "a"}], "row 0: chosen and rejected are the same"),
    ("grpo", [{"prompt": "q"}], "row 0: no ground truth for reward math"),
    ("eval", [{"prompt": "q"}], "row 0: no ground_truth"),
    ("sft", [{"prompt": "q", "ground_truth": "1"}], "format prompt: --stage-kind sft (sft) needs messages rows"),
])
def test_mix_stage_kind_checks_rows(kind, rows, expect, tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"sources": [{"path": str(tmp_path / "d.jsonl")}]}))
    assert main(["mix", str(tmp_path / "m.yaml"), "--stage-kind", kind]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "m.yaml" in err and expect in err, err


@pytest.mark.parametrize("argv,expect", [
    (["--chat-template", "nope"], "--chat-template nope: unknown template 'nope'"),
    (["--tokenizer", "./nope"], "--tokenizer ./nope: cannot load it"),
    (["--tokenizer", "tiny:x"], "--tokenizer tiny:x: cannot load it"),
    (["--stage-kind", "grpo", "--rewards", "nope.yaml"], "nope.yaml: recipe file not found"),
    (["--rewards", "sft_only.yaml"], "--rewards sft_only.yaml: the recipe has no grpo stage"),
    (["--path", "gone.yaml"], "gone.yaml: data mix file not found"),
])
def test_mix_cli_flags(argv, expect, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps(SFT_ROWS[0]) + "\n")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"sources": [{"path": str(tmp_path / "d.jsonl")}]}))
    (tmp_path / "sft_only.yaml").write_text(yaml.safe_dump({"name": "s", "stages": {"sft": {
        "kind": "sft", "mix": str(tmp_path / "m.yaml"), "learning_rate": 1e-4}}}))
    path = argv[1] if argv[0] == "--path" else "m.yaml"
    argv = [] if argv[0] == "--path" else argv
    assert main(["mix", path, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posttrain: error: ") and "\n" not in err and expect in err, err


def test_every_numeric_recipe_field_has_a_range_rule():
    import dataclasses
    import typing

    from posttrain import recipe
    from posttrain.data.validate import FIELD_RULES
    classes = [c for c in vars(recipe).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
               and c.__module__ == recipe.__name__ and c is not recipe.Recipe]
    assert recipe.GRPOStage in classes and recipe.EvalConfig in classes
    missing = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if t in (int, float) or set(typing.get_args(t)) & {int, float}:
                if f"{cls.__name__}.{f.name}" not in FIELD_RULES and f.name not in FIELD_RULES:
                    missing.append(f"{cls.__name__}.{f.name}")
    assert not missing, f"numeric fields without a range rule in posttrain/data/validate.py: {missing}"
