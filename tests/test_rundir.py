"""The run directory's one owner: typed DONE, atomic writes, reading a finished stage back."""

import json

from posttrain.rundir import RunDir, StageDone, StageSummary, read_done, replace_dir, saved_template, write_json


def test_done_written_by_an_earlier_version_reads_back(tmp_path):
    # A DONE as the pipeline wrote it before the typed summary: no key_version, a stage-kind extra.
    (tmp_path / "DONE").write_text(json.dumps({"key": "abc", "stage": "rl", "kind": "grpo", "finished": 5.0,
                                               "summary": {"steps": 3, "accuracy": 0.5, "custom": [1]}}))
    done = read_done(tmp_path)
    assert (done.key, done.kind, done.key_version) == ("abc", "grpo", 1)
    assert done.summary.steps == 3 and done.summary.accuracy == 0.5 and done.summary.extra == {"custom": [1]}
    assert done.summary.train_loss is None
    assert StageDone.from_dict(done.to_dict()) == done
    assert done.to_dict()["summary"] == {"steps": 3, "accuracy": 0.5, "custom": [1]}


def test_unreadable_done_is_not_done(tmp_path):
    (tmp_path / "DONE").write_text("{trunc")
    assert read_done(tmp_path) is None
    (tmp_path / "DONE").write_text("[]")
    assert read_done(tmp_path) is None


def test_atomic_writes_and_dir_replace(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left
    old, new = tmp_path / "out", tmp_path / "new"
    old.mkdir()
    (old / "f").write_text("old")
    new.mkdir()
    (new / "f").write_text("new")
    replace_dir(new, old)
    assert (old / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "out"]


def test_run_dir_reads_recipe_stages_chain_and_attempt_metrics(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_recipe("name: r\nmodel:\n  dtype: bfloat16\nstages:\n  a:\n    kind: sft\n"
                    "    eval: {max_examples: 7}\n  b:\n    kind: dpo\n    init_from: a\n", "recipes/r.yaml")
    assert rd.source() == "recipes/r.yaml" and rd.stage_names() == ["a", "b"] and rd.chain("b") == ["a", "b"]
    ev = rd.eval_config("a")
    assert ev.max_examples == 7 and ev.max_new_tokens == 96  # the recipe's defaults, not retyped
    m = rd.model_config()
    assert m.dtype == "bfloat16" and m.name == "tiny"
    assert rd.metrics_file("b") is None
    rd.work("b", "k1").mkdir(parents=True)
    (rd.work("b", "k1") / "metrics.jsonl").write_text("{}\n")
    assert rd.metrics_file("b") == rd.work("b", "k1") / "metrics.jsonl"
    rd.stage("x").mkdir()
    rd.write_done(rd.stage("x"), StageDone("k", "x", "sft", 3.0, StageSummary(steps=1)))
    assert rd.stage_names() == ["a", "b", "x"] and rd.record("x").summary.steps == 1


def test_saved_template_from_either_file(tmp_path):
    assert saved_template(tmp_path) == ""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "T1"}))
    assert saved_template(tmp_path) == "T1"
    (tmp_path / "chat_template.jinja").write_text("T2")
    assert saved_template(tmp_path) == "T2"
