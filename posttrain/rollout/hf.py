"""Batched generation with transformers `generate`: the CPU / small-model rollout engine.

Prompts are chat message lists rendered with the tokenizer's template and left-padded (the
GDN layers zero padded positions, which is exact only with padding on the left).
"""

from __future__ import annotations

import torch

from posttrain.data.templates import generation_prefix


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 128, batch_size: int = 64,
             temperature: float = 0.0, num_return_sequences: int = 1, progress=None) -> list[str]:
    """Completions (text after the generation prompt, special end tokens stripped), in prompt order;
    with num_return_sequences k, the k samples of prompt i are at [i*k, (i+1)*k)."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    prefix = generation_prefix(tokenizer.chat_template or "")
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[i:i + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sample = temperature > 0
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                             temperature=temperature if sample else None, top_p=None, top_k=None,
                             num_return_sequences=num_return_sequences,
                             pad_token_id=tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        # Keep <think>/</think> (they are the answer format), drop end/pad tokens.
        for row in new.tolist():
            out.append(prefix + _decode_until_end(tokenizer, row, model.generation_config.eos_token_id))
        if progress is not None:
            progress(len(texts))
    model.train(was_training)
    return out


def _decode_until_end(tokenizer, ids: list[int], eos) -> str:
    ends = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.pad_token_id}
    cut = next((j for j, t in enumerate(ids) if t in ends), len(ids))
    return tokenizer.decode(ids[:cut], skip_special_tokens=False)
