"""CLI: dry run changes nothing, errors are one line with exit code 2, mix and stages print tables."""

import re
from pathlib import Path

from posttrain.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert main(["run", "tiny", "--dry-run", f"output_dir={out}", "stages.sft.learning_rate=1e-4"]) == 0
    text = capsys.readouterr().out
    assert "dry run" in text and "sft" in text and "dpo" in text and "rl" in text
    assert not out.exists()


def test_override_after_options_and_bad_override(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["run", "tiny", "--from", "dpo", "--dry-run", f"output_dir={tmp_path}/r"]) == 0
    assert "sft" not in capsys.readouterr().out.split("\n", 3)[-1].split()[:1]
    assert main(["run", "tiny", "--dry-run", "stages.sft.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "stages.sft.nope" in err and "tiny.yaml" in err


def test_stage_with_missing_input_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["run", "tiny", "--stage", "dpo", f"output_dir={tmp_path}/r"]) == 2
    err = capsys.readouterr().err
    assert "starts from 'sft'" in err and "--stage sft" in err


def test_mix_and_stages_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["mix", "data_mixes/tiny/eval_think.yaml"]) == 0
    text = capsys.readouterr().out
    assert "builtin:arith_think" in text and "rows 400" in text and "tokens" in text
    assert main(["stages", "tiny", f"output_dir={tmp_path}/r"]) == 0
    text = capsys.readouterr().out
    assert "pending" in text and "grpo" in text


def test_doctor_reports_kernels(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "gdn" in text and "vllm" in text
    assert re.search(r"fused_layers\s+unavailable", text)  # CPU: the fused norm/MLP kernels need CUDA


def test_mix_reports_verifier_labels_and_their_rewards(tmp_path, capsys, monkeypatch):
    import json
    monkeypatch.chdir(ROOT)
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "ground_truth": ["4"], "dataset": [lab]}
            for i, lab in enumerate(["math", "math", "code_stdio"])]
    (tmp_path / "rl.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "mix.yaml").write_text(f"name: m\nsources:\n  - path: {tmp_path}/rl.jsonl\n"
                                       "    columns: {dataset: verifier}\n")
    assert main(["mix", str(tmp_path / "mix.yaml"), "--rewards", "tiny"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"math\s+\|?\s*2\s+\|?\s*math", out) and re.search(r"code_stdio\s+\|?\s*1\s+\|?\s*NONE", out)
    assert main(["mix", str(tmp_path / "mix.yaml")]) == 0  # default routes: code takes code_stdio
    assert re.search(r"code_stdio\s+\|?\s*1\s+\|?\s*code", capsys.readouterr().out)


def test_offline_dry_run_and_doctor_say_so_once(tmp_path, capsys, caplog, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from posttrain import hub
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(k, "0")  # restored after the test, though go_offline() sets it
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub.hub_problem.cache_clear()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text("sources:\n  - path: someorg/some-dataset\n")
    (tmp_path / "r.yaml").write_text(f"name: t\noutput_dir: {tmp_path}/run\nstages:\n  sft:\n    kind: sft\n"
                                     f"    mix: {tmp_path}/m.yaml\n    learning_rate: 1.0e-4\n")
    try:
        assert main(["run", str(tmp_path / "r.yaml"), "--dry-run"]) == 0
        out = capsys.readouterr()
        lines = [r.getMessage() for r in caplog.records if "hub" in r.getMessage() or "Retry" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith("hub: http://127.0.0.1:9 unreachable"), lines
        assert "unresolved" in out.out and not (tmp_path / "run").exists()
        assert main(["doctor"]) == 0
        assert re.search(r"hub\s+unreachable: http://127.0.0.1:9 unreachable", capsys.readouterr().out)
    finally:
        hub.hub_problem.cache_clear()
