"""The `tiny` base model: a real OlmoHybridForCausalLM small enough to post-train on 2 CPU cores.

GDN and attention 3:1 like the 7B (layers 0-2 GDN, 3 attention, ...), a character-level
tokenizer that keeps Olmo's chat tokens (and, unlike Olmo's, <think> / </think>) as single
tokens. Everything is built by code from a seed, so nothing is fetched at run time and two
machines build the same model bit for bit. With `model.tokenizer: olmo3` the same model is
built on the real Olmo tokenizer (100,278 ids).
"""

from __future__ import annotations

import string

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM, PreTrainedTokenizerFast

from posttrain.data.templates import EOS, IM_END, IM_START, TEMPLATES, THINK_CLOSE, THINK_OPEN

PAD = "<|pad|>"
SPECIALS = [PAD, EOS, IM_START, IM_END, THINK_OPEN, THINK_CLOSE]
# Printable ASCII plus newline: enough for the synthetic tasks and chat markup.
CHARS = ["\n"] + [c for c in string.printable if c.isprintable() or c == " "]


def build_tiny_tokenizer(chat_template: str = "olmo-instruct", vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """The character tokenizer; `vocab_size` pads it with filler tokens (`<wN>`) so that a model with a
    real-sized LM head (a random 7B samples any of 100K ids) decodes whatever it generates."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    vocab["<unk>"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    # WordLevel decodes with spaces between tokens unless a decoder joins them.
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token=PAD, eos_token=IM_END,
        additional_special_tokens=[EOS, IM_START],
    )
    # <think> and </think> are ordinary (non-special) added tokens: one token each here, kept by
    # decode(skip_special_tokens=True), which is how TRL decodes RL completions (as special tokens
    # they vanished there and every think-format reward scored 0). Olmo's real tokenizer (dolma2,
    # model/dolma2.py) has no such tokens: there they are plain BPE pieces.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_OPEN, THINK_CLOSE)])
    if vocab_size is not None and vocab_size > len(tok):
        tok.add_tokens([AddedToken(f"<w{i}>", special=False, normalized=False) for i in range(vocab_size - len(tok))])
    tok.chat_template = TEMPLATES.get(chat_template, chat_template)
    tok.padding_side = "left"  # GDN layers need left padding for batched generation
    return tok


def tiny_config(vocab_size: int, pad_token_id: int, eos_token_ids: list[int]) -> OlmoHybridConfig:
    return OlmoHybridConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, linear_num_key_heads=4, linear_num_value_heads=4,
        linear_key_head_dim=24, linear_value_head_dim=48, max_position_embeddings=2048,
        pad_token_id=pad_token_id, eos_token_id=eos_token_ids, bos_token_id=None,
        tie_word_embeddings=False,
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0) -> OlmoHybridForCausalLM:
    tokenizer = tokenizer or build_tiny_tokenizer()
    ends = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(EOS)]
    cfg = tiny_config(len(tokenizer), tokenizer.pad_token_id, ends)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = OlmoHybridForCausalLM(cfg)
    model.generation_config.eos_token_id = ends
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
