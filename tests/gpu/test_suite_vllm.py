"""A benchmark suite through lm-eval's vLLM backend on a 1B-class random Olmo Hybrid export (GPU).

The Think suite's tasks on the offline fixture shards of tests/test_suites.py (every format and
scorer, 2 seeds, avg@k where the suite asks for it) with a short generation budget; the wall
time goes to $OUT/suite_vllm.json for benchmarks/RESULTS.md. A random model scores ~0: this
checks the path (export's template, vLLM engine per seed, plugin, records), not the numbers.
Run with scripts/gpu_eval.sh.
"""

import json
import os
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


def hybrid_1b(tok):
    """~1.1B parameters: 16 layers (GDN:attention 3:1), hidden 2048, the 7B's head shapes and a 100K vocab."""
    from transformers import OlmoHybridConfig, OlmoHybridForCausalLM
    from posttrain.data.templates import EOS, IM_END
    ends = [tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(EOS)]
    cfg = OlmoHybridConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                           num_attention_heads=16, num_key_value_heads=16, linear_num_key_heads=16,
                           linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
                           max_position_embeddings=4096, pad_token_id=tok.pad_token_id, eos_token_id=ends,
                           bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        return OlmoHybridForCausalLM(cfg).to(torch.bfloat16)


@pytest.fixture(scope="module")
def export_1b(tmp_path_factory):
    from posttrain.export import export_stage
    from posttrain.model.tiny import build_tiny_tokenizer
    run = tmp_path_factory.mktemp("suite_vllm") / "run"
    tok = build_tiny_tokenizer("olmo-think", vocab_size=100278)
    model = hybrid_1b(tok)
    (run / "sft").mkdir(parents=True)
    model.save_pretrained(run / "sft" / "model", save_original_format=False)
    tok.save_pretrained(run / "sft" / "model")
    (run / "recipe.yaml").write_text("name: gpu\nmodel:\n  name: random\nchat_template: olmo-think\n"
                                     "stages:\n  sft:\n    kind: sft\n")
    (run / "sft" / "DONE").write_text(json.dumps({"key": "k", "stage": "sft", "kind": "sft", "summary": {}}))
    return export_stage(run, "sft", "think")


def test_think_suite_on_vllm(export_1b, tmp_path):
    from posttrain import harness
    from posttrain.harness import Target
    from tests.test_suites import small_suite, write_shards
    data = write_shards(tmp_path / "data")
    suite = harness.load_suite(str(small_suite(tmp_path, "think", max_new_tokens=256)))
    t = Target("export:think", export_1b, harness._template_of(export_1b), "gpu")
    t0 = time.time()
    res = harness.evaluate_suite(t, suite, "vllm", data, dtype="bfloat16",
                                 vllm_args={"gpu_memory_utilization": 0.5, "max_model_len": 4096})
    wall = time.time() - t0
    assert set(res["tasks"]) == set(suite.tasks)
    assert res["tasks"]["aime24"]["completions"] == len(suite.seeds) * suite.tasks["aime24"].samples
    assert all(t["examples"][0]["completion"].startswith("<think>") for t in res["tasks"].values())
    params = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["x"]).load_file(
        str(next(Path(export_1b).glob("*.safetensors")))).values())
    rec = {"suite": "think (fixture shards, max_new_tokens 256)", "backend": "vllm", "params": params,
           "seeds": suite.seeds, "completions": sum(t["completions"] for t in res["tasks"].values()),
           "seconds_total": round(wall, 1), "seconds_per_seed_incl_engine_start": round(wall / len(suite.seeds), 1),
           "gpu": torch.cuda.get_device_name()}
    out = Path(os.environ.get("OUT", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite_vllm.json").write_text(json.dumps({**rec, "tasks": {k: {m: v[m] for m in ("score", "stderr", "n",
                                                     "completions", "answered")} for k, v in res["tasks"].items()}},
                                                    indent=2))
    print(json.dumps(rec))
