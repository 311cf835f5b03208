"""Rollout throughput: vLLM vs transformers `generate` on a ~1B Olmo Hybrid, at the RL batch.

Why: RL is generation-bound (45-93% of an Olmo 3 RL step is rollouts), so the engine decides
the step time. Same random ~1B model (the 7B's width ratios), same prompts, 64 prompts x 8
rollouts, fixed lengths (EOS ignored) so both engines do identical work; vLLM is warmed up
first (its first generate autotunes the GDN kernels for ~80 s). Prints a table, writes JSON.

    PYTHONPATH=/tmp/site:. python benchmarks/rollout.py --new-tokens 256 512 --out benchmarks/results/rollout.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def one_b_config(vocab: int = 100352, **overrides):
    from transformers import OlmoHybridConfig
    # 7B ratios: GDN key dim 0.75*hidden/heads, value 2x key, MLP ~2.87x hidden, 3:1 GDN:attention
    kw = dict(vocab_size=vocab, hidden_size=2048, intermediate_size=5888, num_hidden_layers=16, num_attention_heads=16,
              pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return OlmoHybridConfig(**{**kw, **overrides})


def rl_bench_model(gpu: bool, cpu_dtype: str = "bfloat16"):
    """The GRPO benchmarks' policy: the 1.36B random hybrid on a GPU (without one, a small model for a
    smoke run of the same code), the think tokenizer padded to its vocabulary, saved to a temp dir
    that the engines start from. Returns (model, tokenizer, work dir)."""
    from transformers import OlmoHybridForCausalLM

    from posttrain.model.tiny import build_tiny_tokenizer
    cfg = one_b_config() if gpu else one_b_config(
        vocab=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        linear_num_key_heads=4, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=32)
    tok = build_tiny_tokenizer("olmo-think", vocab_size=cfg.vocab_size)
    cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.convert_tokens_to_ids("<|im_end|>")
    if gpu:  # as the stages' load_model does
        from posttrain.model.gdn_l2norm import install
        install()
    torch.manual_seed(0)
    with torch.device("cuda" if gpu else "cpu"):
        model = OlmoHybridForCausalLM(cfg).to(torch.bfloat16 if gpu else getattr(torch, cpu_dtype))
    work = Path(tempfile.mkdtemp())
    model.save_pretrained(work / "init", save_original_format=False)
    tok.save_pretrained(work / "init")
    model.name_or_path = str(work / "init")
    return model, tok, work


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--out", default="benchmarks/results/rollout.json")
    a = ap.parse_args()
    from transformers import OlmoHybridForCausalLM
    torch.manual_seed(0)
    cfg = one_b_config()
    model = OlmoHybridForCausalLM(cfg).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    d = tempfile.mkdtemp()
    model.save_pretrained(d, save_original_format=False)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, cfg.vocab_size, (a.prompts, a.prompt_len), generator=g).tolist()
    rows = []
    res = {"device": torch.cuda.get_device_name(), "params": n_params, "batch": f"{a.prompts} x {a.rollouts}",
           "prompt_len": a.prompt_len, "rows": rows}

    def save():  # after every row: a call cut short still leaves its figures
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)

    from posttrain.vllm_plugin import register
    register()
    from vllm import LLM, SamplingParams
    t = time.perf_counter()
    llm = LLM(model=d, skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.5,
              max_model_len=a.prompt_len + max(a.new_tokens) + 8, seed=0)
    start_s = time.perf_counter() - t

    def sp(n_new):
        return SamplingParams(n=a.rollouts, max_tokens=n_new, ignore_eos=True, temperature=1.0, detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:8]], sp(16), use_tqdm=False)  # warm-up / autotune
    for n_new in a.new_tokens:
        t = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": p} for p in prompts], sp(n_new), use_tqdm=False)
        v_s = time.perf_counter() - t
        v_tokens = sum(len(o.token_ids) for r in out for o in r.outputs)
        rows.append({"engine": "vllm (CUDA graphs)", "new_tokens_each": n_new, "seconds": v_s, "new_tokens": v_tokens,
                     "tokens_per_s": v_tokens / v_s, "engine_start_s": start_s})
        print(rows[-1], flush=True)
        save()
    del llm
    torch.cuda.empty_cache()

    model = model.cuda().eval()
    ids = torch.tensor(prompts, device="cuda").repeat_interleave(a.rollouts, 0)
    with torch.no_grad():
        model.generate(ids[:8], max_new_tokens=8, min_new_tokens=8, do_sample=True, pad_token_id=0)
        for n_new in a.new_tokens:
            torch.cuda.synchronize()
            t = time.perf_counter()
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                                 min_new_tokens=n_new, do_sample=True, temperature=1.0, top_k=None, top_p=None,
                                 pad_token_id=0)
            torch.cuda.synchronize()
            h_s = time.perf_counter() - t
            h_tokens = (gen.shape[1] - a.prompt_len) * gen.shape[0]
            rows.append({"engine": "transformers generate", "new_tokens_each": n_new, "seconds": h_s,
                         "new_tokens": h_tokens, "tokens_per_s": h_tokens / h_s})
            print(rows[-1], flush=True)
            save()
    ratios = {}
    for n_new in a.new_tokens:
        v, h = (next(r for r in rows if r["new_tokens_each"] == n_new and r["engine"].startswith(e))
                for e in ("vllm", "transformers"))
        ratios[str(n_new)] = v["tokens_per_s"] / h["tokens_per_s"]
    res["vllm_over_hf"] = ratios
    print(f"{'engine':<24}{'new/seq':>8}{'seconds':>10}{'new tokens':>12}{'tokens/s':>12}")
    for r in rows:
        print(f"{r['engine']:<24}{r['new_tokens_each']:>8}{r['seconds']:>10.1f}{r['new_tokens']:>12}"
              f"{r['tokens_per_s']:>12.0f}")
    for n_new, x in ratios.items():
        print(f"vLLM / HF generate at {n_new} new tokens: {x:.1f}x on {n_params / 1e9:.2f}B params, {res['device']}")
    save()


if __name__ == "__main__":
    main()
