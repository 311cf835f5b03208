"""After a weight sync, vLLM's logprobs follow the trainer's new weights (GPU machine, vLLM 0.26).

The GRPO stage's own path: TRL's GRPOTrainer with a colocated vLLM engine started from a
checkpoint in vLLM's naming, posttrain's conv-loader plugin, then `sync_weights()` after the
trainer's weights move. vLLM's prompt logprobs must match transformers' fp32 logprobs of the
NEW weights within bf16 noise, and be far from the old ones (so the test can fail: a sync that
silently skipped the GDN conv or the stacked q/k/v would leave vLLM on the old weights).
Run with scripts/gpu_rl.sh.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs CUDA and vLLM")]


def hf_logps(model, ids):
    import copy
    with torch.no_grad():
        m = copy.deepcopy(model).float()  # fp32 reference of the same (bf16) weights
        lp = m(input_ids=torch.tensor([ids], device="cuda")).logits[0, :-1].float().log_softmax(-1)
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:], device="cuda")].cpu()


def test_weight_sync_moves_vllm_to_the_trainers_weights(tmp_path):
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from datasets import Dataset
    from transformers import OlmoHybridConfig, OlmoHybridForCausalLM
    from trl import GRPOConfig
    from vllm import SamplingParams

    from posttrain.model.tiny import build_tiny_tokenizer
    from posttrain.rollout.sampler import PromptQueue
    from posttrain.stages.rl import ActiveGRPOTrainer
    from posttrain.vllm_plugin import register
    register()
    tok = build_tiny_tokenizer("olmo-think")
    cfg = OlmoHybridConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                           num_attention_heads=8, linear_num_key_heads=8, linear_num_value_heads=8,
                           linear_key_head_dim=32, linear_value_head_dim=64, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), bos_token_id=None)
    torch.manual_seed(0)
    model = OlmoHybridForCausalLM(cfg).to(torch.bfloat16)
    d = tmp_path / "init"
    model.save_pretrained(d, save_original_format=False)
    tok.save_pretrained(d)
    model = OlmoHybridForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda()
    rows = [{"prompt": [{"role": "user", "content": f"{i}+{i}?"}]} for i in range(8)]
    args = GRPOConfig(output_dir=str(tmp_path / "t"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                      vllm_enable_sleep_mode=False, bf16=True, report_to=[], vllm_max_model_length=256)
    tr = ActiveGRPOTrainer(model=model, args=args, reward_funcs=[lambda completions, **k: [0.0] * len(completions)],
                           train_dataset=Dataset.from_list(rows), processing_class=tok,
                           queue=PromptQueue(rows), prompt_rows=rows, active=False, solve_threshold=1.0)
    ids = tok("<|im_start|>user\nAna has 12 pens and buys 30 more.<|im_end|>\n<|im_start|>assistant\n<think>12+30=42")["input_ids"]
    llm = tr.vllm_generation.llm

    def vllm_logps():
        out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0))
        pl = out[0].prompt_logprobs  # entry 0 is None: the first token has no context
        return torch.tensor([pl[i][ids[i]].logprob for i in range(1, len(ids))])

    old_hf = hf_logps(tr.model, ids)
    noise = (vllm_logps() - old_hf).abs().max().item()  # vLLM bf16 vs HF fp32, same weights
    with torch.no_grad():
        g = torch.Generator(device="cuda").manual_seed(1)
        for p in tr.model.parameters():
            p.add_(torch.randn(p.shape, generator=g, device="cuda", dtype=p.dtype) * 0.05)
    new_hf = hf_logps(tr.model, ids)
    moved = (new_hf - old_hf).abs().max().item()
    tr.vllm_generation.sync_weights()
    after = vllm_logps()
    err_new, err_old = (after - new_hf).abs().max().item(), (after - old_hf).abs().max().item()
    print(f"noise {noise:.4f}  weights moved logprobs by {moved:.4f}  vLLM vs new {err_new:.4f}  vs old {err_old:.4f}")
    assert moved > 10 * noise, "perturbation too small for the test to mean anything"
    assert err_new <= 3 * noise + 1e-3
    assert err_old > 5 * err_new
