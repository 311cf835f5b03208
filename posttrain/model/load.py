"""Loading models and tokenizers: `tiny` (built by code), a local HF dir, or a hub id.

The chat template always comes from the recipe, never from whatever the checkpoint shipped,
so every stage renders conversations the same way the trainer's masks assume.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from posttrain.data.templates import EOS, IM_END

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(source: str, chat_template: str):
    if source == "tiny":
        from posttrain.model.tiny import build_tiny_tokenizer
        tok = build_tiny_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(source)
    tok.chat_template = chat_template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def end_token_ids(tok) -> list[int]:
    """Both ends a chat model may stop on: <|im_end|> (end of turn) and end of text."""
    ids = [tok.convert_tokens_to_ids(t) for t in (IM_END, EOS)]
    return [i for i in ids if i is not None and i != tok.unk_token_id]


def load_model(source: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
               tokenizer=None, seed: int = 0) -> PreTrainedModel:
    if str(source) == "tiny":
        from posttrain.model.tiny import build_tiny_model
        model = build_tiny_model(tokenizer, seed=seed).to(DTYPES[dtype])
    else:
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=DTYPES[dtype],
                                                     attn_implementation=attn_implementation)
    if tokenizer is not None:
        model.generation_config.eos_token_id = end_token_ids(tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
