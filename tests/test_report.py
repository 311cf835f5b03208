"""Report and cross-stage evals, from a fake run dir (metrics/evals written by hand, tiny random models)."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from posttrain import report
from posttrain.rundir import EVALS, EVALS_BASE, METRICS, RunDir, StageDone, StageSummary, write_json

EVAL_MIX = "sources:\n  - path: builtin:arith_think\n    split: test\n    count: 4\n"


def _metrics(stage: str, kind: str) -> list[dict]:
    rows = []
    for step in range(1, 11):
        r = {"time": 1000.0 + 3 * step, "stage": stage, "step": step, "learning_rate": 1e-3,
             "tokens_per_s": 900.0 + step, "num_tokens": 4000 * step}
        if kind == "sft":
            r["loss"] = 4.0 / step
        elif kind == "dpo":
            r.update({"loss": 0.69 - 0.03 * step, "rewards/accuracies": 0.5 + 0.04 * step, "rewards/margins": 0.1 * step})
        else:
            r.update({"loss": 0.01 * step, "reward": 0.1 * step, "rewards/math/mean": 0.08 * step, "reward_std": 0.2})
        rows.append(r)
    rows.append({"time": 1040.0, "stage": stage, "step": 10, "train_runtime": 31.5, "train_loss": 1.0})
    return rows


def make_run(root: Path, with_models: bool = False) -> Path:
    run = root / "run"
    stages = [("sft", "sft", None), ("dpo", "dpo", "sft"), ("rl", "grpo", "dpo")]
    (root / "eval.yaml").write_text(EVAL_MIX)
    body = "".join(f"  {n}:\n    kind: {k}\n    mix: x.yaml\n    learning_rate: 0.001\n"
                   f"    eval:\n      mix: {root / 'eval.yaml'}\n      max_examples: 4\n      max_new_tokens: 6\n"
                   f"      batch_size: 4\n" + (f"    init_from: {p}\n" if p else "") for n, k, p in stages)
    run.mkdir()
    rd = RunDir(run)
    rd.write_recipe(f"name: fake\nseed: 0\nmodel:\n  name: tiny\nchat_template: olmo-think\nstages:\n{body}",
                    "recipes/fake.yaml")
    for i, (n, k, _) in enumerate(stages):
        d = run / n
        d.mkdir()
        if with_models:
            from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
            tok = build_tiny_tokenizer("olmo-think")
            build_tiny_model(tok, seed=i).save_pretrained(d / "model", save_original_format=False)
            tok.save_pretrained(d / "model")
        (d / METRICS).write_text("".join(json.dumps(r) + "\n" for r in _metrics(n, k)))
        write_json(d / EVALS, {"n": 4, "accuracy": 0.2 * (i + 1), "format": 0.9, "mean_length": 30.0 + i})
        write_json(d / "manifest.json", {"train": {"name": f"mix-{n}", "sha256": "ab" * 32, "rows": 8}})
        summ = StageSummary(train_loss=1.0 / (i + 1), steps=10)
        if k == "dpo":
            summ = StageSummary(train_loss=summ.train_loss, steps=10, pref_accuracy_before=0.55, pref_accuracy=0.875,
                                margin_before=0.0, margin=1.5)
        rd.write_done(d, StageDone(f"k{i}", n, k, 1.0 + i, summ))
    write_json(run / "sft" / EVALS_BASE, {"n": 4, "accuracy": 0.0, "format": 0.0, "mean_length": 50.0})
    exp = rd.export("think")
    exp.mkdir(parents=True)
    write_json(exp / "export.json", {"stage": "rl", "kind": "think", "verification": {"max_abs_logit_diff": 0.0}})
    return run


def test_report_has_plots_and_tables(tmp_path):
    run = make_run(tmp_path)
    out = report.write_report(run)
    assert out == run / "report.html"
    doc = out.read_text()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert len(imgs) >= 5, len(imgs)  # loss, DPO, GRPO rewards, evals, time
    assert all(base64.b64decode(x)[:8] == b"\x89PNG\r\n\x1a\n" for x in imgs)
    for title in ("Training loss per stage", "DPO preference accuracy", "GRPO rewards: rl", "Held-out eval across stages", report.EVAL_PLOT,
                  "Time and throughput"):
        assert title in doc, title
    table = doc[doc.index('class="evals"'):]
    table = table[:table.index("</table>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    assert cells[:2] == ["base", ""] and "0.000" in cells
    assert ["rl", "grpo", "4", "0.600", "0.900", "32.0"] == cells[-9:-3]
    assert "0.875" in table and "0.550" in table  # DPO preference accuracy after/before
    assert 'href="exports/think/"' in doc and "31.5" in doc and "mix-dpo" in doc
    assert "src=\"http" not in doc and "<script" not in doc  # self-contained


def test_report_on_a_partial_run(tmp_path):
    run = make_run(tmp_path)
    shutil.rmtree(run / "rl")
    shutil.rmtree(run / "exports")
    doc = report.write_report(run).read_text()
    assert "not run" in doc and "No exports yet" in doc and "GRPO rewards" not in doc
    with pytest.raises(report.ReportError, match="not a run directory"):
        report.write_report(tmp_path / "nothing")


def test_eval_table_text(tmp_path):
    txt = report.format_table(report.eval_rows(make_run(tmp_path)))
    lines = txt.splitlines()
    assert lines[0].split()[:2] == ["stage", "kind"] and "pref acc after" in lines[0]
    assert [ln.split()[0] for ln in lines[2:]] == ["base", "sft", "dpo", "rl"]


def test_eval_run_rewrites_evals(tmp_path, capsys):
    run = make_run(tmp_path, with_models=True)
    rows = report.eval_run(run, stage="dpo")
    ev = json.loads((run / "dpo" / "evals.json").read_text())
    assert ev["n"] == 4 and len(ev["samples"]) == 4 and 0 <= ev["accuracy"] <= 1
    assert ev["mean_length"] != 31.0  # the fake value was replaced
    assert json.loads((run / "sft" / "evals.json").read_text())["accuracy"] == 0.2  # other stages untouched
    assert [r["stage"] for r in rows] == ["base", "sft", "dpo", "rl"]
    with pytest.raises(report.ReportError, match="stage nope of .* has no finished output"):
        report.eval_run(run, stage="nope")
    assert report.main(["eval", str(run), "--stage", "sft", "--max-examples", "2"]) == 0
    out = capsys.readouterr().out
    assert "stage" in out.splitlines()[0] and "accuracy" in out.splitlines()[0]
    assert json.loads((run / "sft" / "evals.json").read_text())["n"] == 2


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="no chromium")
def test_report_renders_in_a_browser(tmp_path):
    out = report.write_report(make_run(tmp_path))
    png = tmp_path / "shot.png"
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--screenshot={png}", "--window-size=1200,2000",
                    out.resolve().as_uri()], capture_output=True, timeout=120)
    assert png.is_file() and png.stat().st_size > 20_000  # a blank page is a few kB


def test_failed_export_after_a_run_says_so_and_keeps_the_stages(tmp_path, monkeypatch, capsys):
    import types

    from posttrain import cli, export
    run = make_run(tmp_path)
    before = (run / "rl" / "DONE").read_bytes()

    def broken(run_dir, exports):
        raise export.ExportError("reloaded logits differ")
    monkeypatch.setattr(export, "run_exports", broken)
    recipe = types.SimpleNamespace(output_dir=run, cfg=types.SimpleNamespace(
        exports=[types.SimpleNamespace(stage="rl", kind="think", out=None)], benchmarks=[]))
    assert cli.finish_run(recipe) == 1
    err = capsys.readouterr().err
    assert "export of rl as think failed: reloaded logits differ" in err and "posttrain export" in err
    assert "benchmark" not in err
    assert (run / "rl" / "DONE").read_bytes() == before and (run / "report.html").is_file()
