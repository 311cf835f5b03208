"""An export serves in vLLM with the same numbers as transformers (GPU machine, vLLM 0.26).

`posttrain export` of a small random Olmo Hybrid (3 GDN + 1 attention layer, the tiny char
tokenizer) is loaded by vLLM through posttrain's general plugin (found by its entry point, as
an installed posttrain would be), and vLLM's prompt logprobs and greedy-decode logprobs are
compared with transformers' fp32 logprobs (CPU, so TF32 cannot blur the reference).

Tolerances come from measured noise, not guesses: the bf16 engine may differ from fp32 by
3x what transformers itself moves between bf16 and fp32 on the same model; the fp32 engine
by half of that (its Triton kernels may use TF32, ~8x finer than bf16). A guard checks the
test can fail: swapping the q and k sections of the fused conv weight (the kind of mistake a
wrong loader makes) must move the logprobs by far more than the tolerance.

Each engine runs in its own process (a failed or finished vLLM engine does not free the GPU
cleanly). Run with scripts/gpu_export.sh; first generate autotunes vLLM's GDN kernels (~1 min).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs CUDA and vLLM")]

ROOT = Path(__file__).resolve().parents[2]
CONV = [{"role": "user", "content": "Ana has 12 apples and buys 30 more. How many apples does she have?"}]
DECODE_TOKENS = 24


def small_hybrid(tok):
    from transformers import OlmoHybridConfig, OlmoHybridForCausalLM
    from posttrain.data.templates import EOS, IM_END
    ends = [tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(EOS)]
    # Head dims 64 (what vLLM's GDN and attention kernels are tuned for); default init 0.02,
    # which keeps bf16 noise well below what a mis-loaded conv weight does (measured on CPU:
    # bf16 noise 0.018, q/k conv swap 0.53 in max |logprob| diff).
    cfg = OlmoHybridConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=4, linear_num_key_heads=4,
                           linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
                           max_position_embeddings=2048, pad_token_id=tok.pad_token_id, eos_token_id=ends,
                           bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    return OlmoHybridForCausalLM(cfg)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A fake finished stage holding the small hybrid, exported with `export_stage` (verified on CPU)."""
    from posttrain.export import export_stage
    from posttrain.rundir import RunDir, StageDone
    from posttrain.model.tiny import build_tiny_tokenizer
    root = tmp_path_factory.mktemp("vllm_export")
    run = root / "run"
    tok = build_tiny_tokenizer("olmo-think")
    model = small_hybrid(tok)
    (run / "sft").mkdir(parents=True)
    model.save_pretrained(run / "sft" / "model", save_original_format=False)
    tok.save_pretrained(run / "sft" / "model")
    rd = RunDir(run)
    rd.write_recipe("name: gpu\nmodel:\n  name: random\nchat_template: olmo-think\nstages:\n  sft:\n    kind: sft\n",
                    "tests/gpu")
    rd.write_done(rd.stage("sft"), StageDone("k", "sft", "sft"))
    return export_stage(run, "sft", "think")


@pytest.fixture(scope="module")
def prompts(exported):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(exported)
    texts = [tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True),
             "Count: " + " ".join(str(i) for i in range(90)),  # > 4 GDN chunks of 64
             "Hi"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """Make vLLM find the plugin by entry point, as it would for an installed posttrain."""
    from importlib.metadata import entry_points
    if any(e.value.startswith("posttrain.vllm_plugin") for e in entry_points(group="vllm.general_plugins")):
        return None
    d = tmp_path_factory.mktemp("plugin") / "posttrain_gpu_test-0.0.dist-info"
    d.mkdir()
    (d / "METADATA").write_text("Metadata-Version: 2.1\nName: posttrain-gpu-test\nVersion: 0.0\n")
    (d / "entry_points.txt").write_text("[vllm.general_plugins]\n"
                                        "posttrain_olmo_hybrid_conv = posttrain.vllm_plugin:register\n")
    return d.parent


def run_vllm(model: Path, dtype: str, ids: list[list[int]], tmp: Path, plugin_path, plugins: bool = True) -> dict:
    out = tmp / f"vllm_{dtype}_{int(plugins)}.json"
    (tmp / "ids.json").write_text(json.dumps(ids))
    env = dict(os.environ, VLLM_USE_FLASHINFER_SAMPLER="0", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               TRITON_CACHE_AUTOTUNING="1")
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in (plugin_path, ROOT) if p] + [env.get("PYTHONPATH", "")])
    if not plugins:
        env["VLLM_PLUGINS"] = ""  # an allowlist naming nothing: no general plugins load
    r = subprocess.run([sys.executable, __file__, "--worker", str(model), dtype, str(tmp / "ids.json"), str(out)],
                       env=env, capture_output=True, text=True, timeout=900)
    if not out.is_file():
        raise AssertionError(f"vLLM worker wrote nothing (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    res = json.loads(out.read_text())
    res["log"] = r.stderr[-4000:]
    return res


def hf_token_logprobs(model_dir: Path, seqs: list[list[int]], dtype=torch.float32, swap_qk_conv=False) -> list[list]:
    """logprob of each token given the ones before it (None for the first), transformers on CPU."""
    from transformers import AutoModelForCausalLM
    # On CUDA, TF32 off: transformers routes GDN to fla (Triton, CUDA-only) once fla is installed.
    torch.backends.cuda.matmul.allow_tf32 = False
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval().cuda()
    if swap_qk_conv:
        kd = m.config.linear_num_key_heads * m.config.linear_key_head_dim
        for layer in m.model.layers:
            if hasattr(layer, "linear_attn"):
                w = layer.linear_attn.conv1d.weight
                w.data = torch.cat([w.data[kd:2 * kd], w.data[:kd], w.data[2 * kd:]])
    out = []
    with torch.no_grad():
        for s in seqs:
            lp = torch.log_softmax(m(torch.tensor([s], device="cuda")).logits[0].float(), -1).cpu()
            out.append([None] + lp[:-1].gather(1, torch.tensor(s[1:])[:, None])[:, 0].tolist())
    return out


def max_diff(a: list[list], b: list[list]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb) if x is not None and y is not None)


@pytest.fixture(scope="module")
def reference(exported, prompts):
    ref = hf_token_logprobs(exported, prompts)
    noise = max_diff(ref, hf_token_logprobs(exported, prompts, torch.bfloat16))
    broken = max_diff(ref, hf_token_logprobs(exported, prompts, swap_qk_conv=True))
    tol = {"bfloat16": max(3 * noise, 0.02), "float32": max(noise / 2, 2e-3)}
    print(f"\nHF bf16-vs-fp32 noise {noise:.4f}; q/k conv swap moves logprobs by {broken:.3f}; tolerances {tol}")
    assert broken > 5 * tol["bfloat16"], "test model cannot tell a mis-loaded conv weight from bf16 noise"
    return ref, tol


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vllm_matches_transformers(exported, prompts, reference, plugin_path, tmp_path, dtype):
    ref, tol = reference
    res = run_vllm(exported, dtype, prompts, tmp_path, plugin_path)
    if "error" in res and dtype == "float32" and ("dtype" in res["error"].lower() or "float32" in res["error"]):
        pytest.skip(f"vLLM refuses float32 for this model: {res['error'][:300]}")
    assert "error" not in res, res["error"] + "\n" + res["log"]
    assert res["plugin_fixed"], "the posttrain plugin did not patch vLLM's conv loader"
    d = max_diff(res["prompt_logprobs"], ref)
    print(f"vLLM {dtype}: prompt max |logprob diff| {d:.4f} (tol {tol[dtype]:.4f})")
    assert d <= tol[dtype]
    # decode path (recurrent GDN + conv state update): teacher-force vLLM's own greedy tokens in HF
    seqs = [p + g for p, g in zip(prompts, res["greedy_tokens"])]
    hf = hf_token_logprobs(exported, seqs)
    dec = max(abs(v - h) for p, vs, hs in zip(prompts, res["greedy_logprobs"], hf)
              for v, h in zip(vs, hs[len(p):]))
    print(f"vLLM {dtype}: decode max |logprob diff| {dec:.4f} over {DECODE_TOKENS} tokens x {len(prompts)}")
    assert dec <= tol[dtype]
    # what ships with the export reaches the server
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(exported)
    assert res["chat"] == tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    assert res["chat"].endswith("<think>") and res["chat_ids"] == prompts[0]
    assert res["defaults"]["temperature"] == pytest.approx(0.6) and res["defaults"]["top_p"] == pytest.approx(0.95)


@pytest.mark.gpu
def test_vllm_without_plugin_fails_as_documented(exported, prompts, plugin_path, tmp_path):
    """Keeps the plugin honest: if a vLLM release loads the export unaided, this says so."""
    from posttrain.vllm_plugin import _affected, vllm_version
    if not _affected(vllm_version()):
        pytest.skip(f"vLLM {vllm_version()} is outside the plugin's version gate")
    res = run_vllm(exported, "bfloat16", prompts[:1], tmp_path, plugin_path, plugins=False)
    assert "error" in res, "vLLM loaded the export without the plugin: the bug is fixed; narrow BROKEN"
    assert "NoneType" in res["error"] or "shard" in res["error"], res["error"]


# ---- worker: one vLLM engine in its own process -------------------------------------------------
def _worker(model: str, dtype: str, ids_file: str, out_file: str) -> None:
    ids = json.loads(Path(ids_file).read_text())
    res: dict = {"dtype": dtype}
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        llm = LLM(model=model, dtype=dtype, enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=1024,
                  seed=0)
    except Exception as e:  # noqa: BLE001 - reported to the test, which decides
        import traceback
        res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
        Path(out_file).write_text(json.dumps(res))
        return
    import vllm.model_executor.layers.mamba.gdn.olmo_gdn_linear_attn as gdn
    res["plugin_fixed"] = bool(getattr(gdn._make_fused_conv1d_weight_loader, "_posttrain_fixed", False))
    prompts = [TokensPrompt(prompt_token_ids=x) for x in ids]
    outs = llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1))
    res["prompt_logprobs"] = [[None] + [pl[t].logprob for pl, t in zip(o.prompt_logprobs[1:], x[1:])]
                              for o, x in zip(outs, ids)]
    outs = llm.generate(prompts, SamplingParams(max_tokens=DECODE_TOKENS, temperature=0.0, logprobs=0, ignore_eos=True))
    res["greedy_tokens"] = [list(o.outputs[0].token_ids) for o in outs]
    res["greedy_logprobs"] = [[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
                              for o in outs]
    tok = llm.get_tokenizer()
    res["chat"] = tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    res["chat_ids"] = tok.encode(res["chat"], add_special_tokens=False)
    d = llm.get_default_sampling_params()
    res["defaults"] = {"temperature": d.temperature, "top_p": d.top_p}
    Path(out_file).write_text(json.dumps(res))


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(*sys.argv[2:6])
