"""Export: a verified, atomic HF checkpoint per finished stage; the vLLM plugin is inert without vLLM.

A tiny random model saved as a fake finished stage stands in for training (no training here).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from posttrain import export as ex
from posttrain import vllm_plugin
from posttrain.data.templates import EOS, IM_END, TEMPLATES
from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
from posttrain.rundir import EVALS, RunDir, StageDone, StageSummary, write_json

ROOT = Path(__file__).resolve().parent.parent
CONV = [{"role": "user", "content": "What is 2 + 3?"}]


def make_run(root: Path, stages=("sft", "dpo"), template="olmo-think") -> Path:
    """A run dir as the pipeline leaves it, with tiny random models instead of trained ones."""
    run = root / "run"
    run.mkdir()
    body = "".join(f"  {n}:\n    kind: {n if n != 'rl' else 'grpo'}\n    mix: data_mixes/tiny/x_{n}.yaml\n"
                   f"    learning_rate: 0.001\n" + (f"    init_from: {stages[i - 1]}\n" if i else "")
                   for i, n in enumerate(stages))
    rd = RunDir(run)
    rd.write_recipe(f"name: fake\nseed: 0\nmodel:\n  name: tiny\nchat_template: {template}\nstages:\n{body}",
                    "recipes/fake.yaml")
    for i, n in enumerate(stages):
        d = run / n
        tok = build_tiny_tokenizer(template)
        model = build_tiny_model(tok, seed=i + 1)
        model.save_pretrained(d / "model", save_original_format=False)
        tok.save_pretrained(d / "model")
        (d / "config.yaml").write_text(f"name: fake\nstages:\n  {n}:\n    kind: {n}\n    learning_rate: 0.001\n"
                                       f"    max_length: 256\n" + (f"    init_from: {stages[i - 1]}\n" if i else ""))
        mix = {"mix": f"data_mixes/tiny/x_{n}.yaml", "name": f"mix-{n}", "rows": 10, "sha256": f"{n}hash" * 4,
               "sources": [{"path": f"builtin:{n}", "split": "train", "taken": 10, "sha256": f"src{n}" * 8}]}
        write_json(d / "manifest.json", {"train": mix, "eval": {"name": "ev", "sha256": "evhash" * 8}})
        write_json(d / EVALS, {"n": 4, "accuracy": 0.25 * (i + 1), "format": 1.0, "mean_length": 20.0, "samples": []})
        rd.write_done(d, StageDone(f"key{n}", n, n, 1.0 + i, StageSummary(train_loss=1.0)))
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("exp"))


def _logits(d, ids):
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits


@pytest.mark.parametrize("kind", ["instruct", "think"])
def test_export_roundtrip(run, tmp_path, kind):
    out = ex.export_stage(run, "dpo", kind, tmp_path / kind)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md", "export.json"} <= names, names
    assert not list(tmp_path.glob(".*tmp*")), "temporary dir left behind"
    # stock classes, from the export alone: same logits as the stage model
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(_logits(out, ids), _logits(run / "dpo" / "model", ids), rtol=0, atol=1e-5)
    # template: renders like the trainer's; only think opens with <think>; no training-only tags shipped
    ref = build_tiny_tokenizer(f"olmo-{kind}")
    conv = CONV + [{"role": "assistant", "content": "<think>2+3=5</think>5"}]
    assert tok.apply_chat_template(conv, tokenize=False) == ref.apply_chat_template(conv, tokenize=False)
    prompt = tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>" if kind == "think" else "<|im_start|>assistant\n")
    assert "{% generation %}" not in (out / "chat_template.jinja").read_text()
    # both ends and the kind's sampling defaults
    gen = GenerationConfig.from_pretrained(out)
    assert set(gen.eos_token_id) == {tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(EOS)}
    assert gen.do_sample and gen.temperature == ex.SAMPLING[kind]["temperature"] and gen.top_p == 0.95
    # vLLM naming: fused conv, no original-format names
    from safetensors import safe_open
    keys = set(safe_open(out / "model.safetensors", "pt").keys())
    assert "model.layers.0.linear_attn.conv1d.weight" in keys
    assert not any("attention_layer_norm" in k for k in keys)
    card = (out / "README.md").read_text()
    for must in ("recipes/fake.yaml", "mix-sft", "mix-dpo", "sfthash" * 4, "dpohash" * 4, "src" + "sft" * 1,
                 "learning_rate=0.001", "vllm serve", "AutoModelForCausalLM", "sft -> dpo", "accuracy", "0.500"):
        assert must in card, must
    assert "{{VERIFICATION}}" not in card and "Verified at export" in card
    info = json.loads((out / "export.json").read_text())
    assert info["stage_key"] == "keydpo" and info["verification"]["max_abs_logit_diff"] <= 1e-5


def test_verification_catches_a_changed_model(run, tmp_path, monkeypatch):
    """The check must be able to fail: perturb a weight between save and verify."""
    real = ex._write_export

    def tampered(src, done, kind, dst):
        info = real(src, done, kind, dst)
        from safetensors.torch import load_file, save_file
        sd = load_file(dst / "model.safetensors")
        sd["model.norm.weight"] = sd["model.norm.weight"] * 1.01
        save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
        return info

    monkeypatch.setattr(ex, "_write_export", tampered)
    with pytest.raises(ex.ExportError, match="logits differ"):
        ex.export_stage(run, "sft", "think", tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_verification_catches_a_wrong_template(run, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "shipped_template", lambda t: TEMPLATES["olmo-instruct"].replace("\\n", " "))
    with pytest.raises(ex.ExportError, match="renders differently"):
        ex.export_stage(run, "sft", "instruct", tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_custom_training_template_ships_as_trained(tmp_path):
    run = make_run(tmp_path, stages=("sft",))
    custom = TEMPLATES["olmo-instruct"].replace("'<|im_start|>' + message['role']", "'<|im_start|>' + message['role'] + ':'")
    (run / "sft" / "model" / "chat_template.jinja").write_text(custom)
    out = ex.export_stage(run, "sft", "instruct", tmp_path / "o")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template(CONV, tokenize=False).startswith("<|im_start|>user:\n")
    with pytest.raises(ex.ExportError, match="export it --as instruct"):
        ex.export_stage(run, "sft", "think", tmp_path / "t")


def test_refuses_nonempty_dir_without_force(run, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ex.ExportError) as e:
        ex.export_stage(run, "sft", "think", out)
    assert str(out) in str(e.value) and "--force" in str(e.value) and "\n" not in str(e.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    ex.export_stage(run, "sft", "think", out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no temp or old dir left


def test_crash_mid_export_leaves_nothing(run, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def boom(self, *a, **k):  # the model is already written when the tokenizer save fails
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        ex.export_stage(run, "sft", "think", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_crash_keeps_previous_export(run, tmp_path, monkeypatch):
    out = ex.export_stage(run, "sft", "instruct", tmp_path / "out")
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(ex, "_verify", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        ex.export_stage(run, "dpo", "think", out, force=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


KILL_AT = {  # a real SIGKILL (no cleanup runs) at a chosen point of an export in a child process
    "verify": "ex._verify = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)",
    "swap": "ex.replace_dir = lambda tmp, out: (out.rename(out.parent / f'.{out.name}.old-1'), "
            "os.kill(os.getpid(), signal.SIGKILL))",
}


def killed_export(run, out, at, force=False):
    argv = [str(run), "--stage", "sft", "--as", "think", "--out", str(out)] + (["--force"] if force else [])
    code = f"import os, signal, sys\nfrom posttrain import export as ex\n{KILL_AT[at]}\nsys.exit(ex.main({argv!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_rerun_after_killed_export_leaves_no_temp_dir(run, tmp_path):
    out = tmp_path / "exports" / "think"
    killed_export(run, out, "verify")
    left = list(out.parent.glob(".think.tmp-*"))
    assert len(left) == 1 and (left[0] / "model.safetensors").is_file() and not out.exists()
    ex.export_stage(run, "sft", "think", out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["think"]
    assert (out / "model.safetensors").stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777


def test_rerun_after_kill_mid_swap_leaves_no_old_dir(run, tmp_path):
    out = ex.export_stage(run, "sft", "think", tmp_path / "think")
    killed_export(run, out, "swap", force=True)
    assert not out.exists() and {p.name.split("-")[0] for p in tmp_path.iterdir()} == {".think.old", ".think.tmp"}
    ex.export_stage(run, "sft", "think", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["think"]


def test_a_live_exports_temp_dir_is_left_alone(run, tmp_path):
    out = tmp_path / "think"
    busy = tmp_path / f".think.tmp-{os.getppid()}-1"  # pid of a process that is running
    busy.mkdir()
    ex.export_stage(run, "sft", "think", out)
    assert busy.is_dir() and out.is_dir()


def test_missing_stage_is_one_line(run, tmp_path):
    with pytest.raises(ex.ExportError) as e:
        ex.export_stage(run, "rl", "think", tmp_path / "o")
    msg = str(e.value)
    assert msg.startswith(f"stage rl of {run} has no finished output (no DONE)") and "\n" not in msg
    assert not (tmp_path / "o").exists()
    with pytest.raises(ex.ExportError, match="must be one of"):
        ex.export_stage(run, "sft", "chat", tmp_path / "o")


def test_cli_error_and_success(run, tmp_path, capsys):
    assert ex.main([str(run), "--stage", "nope", "--as", "think", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posttrain: error: stage nope of") and "\n" not in err
    assert ex.main([str(run), "--stage", "sft", "--as", "think"]) == 0
    assert (run / "exports" / "think" / "README.md").is_file()
    assert "vllm serve" in capsys.readouterr().out


def test_run_exports_skips_up_to_date(run, tmp_path):
    cfg = [types.SimpleNamespace(stage="sft", kind="instruct", out=str(tmp_path / "e"))]
    [out] = ex.run_exports(run, cfg)
    t = (out / "export.json").stat().st_mtime_ns
    ex.run_exports(run, cfg)
    assert (out / "export.json").stat().st_mtime_ns == t
    rd = RunDir(run)
    done = rd.done("sft")
    rd.write_done(rd.stage("sft"), dataclasses.replace(done, key="changed"))
    try:
        ex.run_exports(run, cfg)
        assert json.loads((out / "export.json").read_text())["stage_key"] == "changed"
    finally:
        rd.write_done(rd.stage("sft"), done)


# ---- vLLM plugin (no vLLM here) -----------------------------------------------------------------
def test_plugin_is_inert_without_vllm():
    code = ("import sys; import posttrain.vllm_plugin as p; r = p.register(); "
            "assert 'vllm' not in sys.modules, 'imported vllm'; print(r)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    if vllm_plugin.vllm_version() is None:
        assert "nothing to do" in r.stdout


def _buggy_factory(dims, tp_size, tp_rank):
    """Behaves like vLLM 0.26.0's fused-conv loader: needs an int shard id, ignores tensor attributes."""
    def load(param, w, shard=None):
        if w.dim() == 2:
            w = w.unsqueeze(1)
        size = dims[shard] // tp_size
        off = sum(d // tp_size for d in dims[:shard])
        param.data[off:off + size].copy_(w[tp_rank * size:(tp_rank + 1) * size])
    return load


@pytest.mark.parametrize("tp", [1, 2])
def test_plugin_fix_loads_fused_and_separate(tp):
    mod = types.SimpleNamespace(_make_fused_conv1d_weight_loader=_buggy_factory)
    assert vllm_plugin._is_broken(_buggy_factory)
    assert vllm_plugin.patch_module(mod) and vllm_plugin.patch_module(mod)  # idempotent
    dims, w = [8, 8, 16], torch.randn(32, 1, 4)
    for rank in range(tp):
        want = torch.cat([w[:8].chunk(tp)[rank], w[8:16].chunk(tp)[rank], w[16:].chunk(tp)[rank]])
        fused = torch.zeros(32 // tp, 1, 4)
        mod._make_fused_conv1d_weight_loader(dims, tp, rank)(fused, w)
        assert torch.equal(fused, want)
        sep = torch.zeros(32 // tp, 1, 4)
        for i, (a, b) in enumerate([(0, 8), (8, 16), (16, 32)]):
            part = w[a:b, 0].clone()
            part.shard_id = i  # how vLLM's weights mapper passes it
            mod._make_fused_conv1d_weight_loader(dims, tp, rank)(sep, part)
        assert torch.equal(sep, want)
    with pytest.raises(ValueError, match="expected 32"):
        mod._make_fused_conv1d_weight_loader(dims, 1, 0)(torch.zeros(32, 1, 4), torch.zeros(30, 1, 4))


def test_plugin_leaves_a_fixed_vllm_alone():
    def good(dims, tp_size, tp_rank):
        return lambda p, w, s=None: p.data.copy_(w)
    mod = types.SimpleNamespace(_make_fused_conv1d_weight_loader=good)
    assert not vllm_plugin.patch_module(mod) and mod._make_fused_conv1d_weight_loader is good


def test_plugin_patches_on_import(tmp_path, monkeypatch):
    """register() before the module is imported (as vLLM does) patches it when it is imported."""
    if vllm_plugin.vllm_version() is not None:
        pytest.skip("a real vLLM is installed; the GPU test covers it")
    pkg = tmp_path / vllm_plugin.TARGET.rsplit(".", 1)[0].replace(".", "/")
    pkg.mkdir(parents=True)
    for d in [tmp_path / "vllm", *list(pkg.relative_to(tmp_path).parents)]:
        (tmp_path / d / "__init__.py").touch()
    (pkg / "olmo_gdn_linear_attn.py").write_text(
        "def _make_fused_conv1d_weight_loader(dims, tp_size, tp_rank):\n"
        "    def load(param, w, shard=None):\n"
        "        param.data[sum(dims[:shard]):sum(dims[:shard + 1])].copy_(w)\n"
        "    return load\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(vllm_plugin, "vllm_version", lambda: "0.26.0")
    finders = list(sys.meta_path)
    try:
        assert vllm_plugin.register() == "will patch on import"
        assert vllm_plugin.register() == "will patch on import"  # no second hook
        assert sum(isinstance(f, vllm_plugin._PatchOnImport) for f in sys.meta_path) == 1
        import importlib
        mod = importlib.import_module(vllm_plugin.TARGET)
        assert getattr(mod._make_fused_conv1d_weight_loader, "_posttrain_fixed", False)
        p = torch.zeros(6, 1, 4)
        mod._make_fused_conv1d_weight_loader([2, 2, 2], 1, 0)(p, torch.ones(6, 1, 4))
        assert bool(p.eq(1).all())
        assert vllm_plugin.register() == "patched"
        # vLLM's CUDA-IPC weight transfer module imports ray at its top; without ray it still loads
        ipc = tmp_path / vllm_plugin.IPC.rsplit(".", 1)[0].replace(".", "/")
        ipc.mkdir(parents=True)
        for d in [ipc, *[x for x in ipc.relative_to(tmp_path).parents if str(x) != "."]]:
            (tmp_path / d / "__init__.py").touch()
        (ipc / "ipc_engine.py").write_text("import ray\nSEND = 'http'\n")
        import importlib.util
        if importlib.util.find_spec("ray") is None:
            assert importlib.import_module(vllm_plugin.IPC).SEND == "http" and "ray" not in sys.modules
    finally:
        sys.meta_path[:] = finders
        for k in [k for k in sys.modules if k == "vllm" or k.startswith("vllm.")]:
            del sys.modules[k]
    monkeypatch.setattr(vllm_plugin, "vllm_version", lambda: "0.27.1")
    assert "not a known-broken" in vllm_plugin.register()
