"""Loading models and tokenizers: `tiny` (built by code), a local HF dir, a hub id, or
`random:CONFIG`, random weights of a model's shapes (for throughput runs with no checkpoint);
tokenizers also `olmo3` (dolma2, shipped inside posttrain: model/dolma2.py).

The chat template always comes from the recipe, never from whatever the checkpoint shipped,
so every stage renders conversations the same way the trainer's masks assume.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from posttrain.data.templates import EOS, IM_END
from posttrain.launch import local_rank

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(source: str, chat_template: str):
    from posttrain.model import dolma2
    if source == "tiny" or source.startswith("tiny:"):  # tiny:N pads it to N ids (a random 7B's vocabulary)
        from posttrain.model.tiny import build_tiny_tokenizer
        tok = build_tiny_tokenizer(vocab_size=int(source[5:]) if source != "tiny" else None)
    elif source in dolma2.NAMES:  # the Olmo 3 / Olmo Hybrid tokenizer, shipped inside posttrain
        tok = dolma2.build_dolma2_tokenizer()
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


RANDOM = "random:"
SHAPES_7B = "olmo-hybrid-7b"


def random_config(spec: str):
    """Config for `random:olmo-hybrid-7b` (transformers' OlmoHybridConfig defaults: the 7B, 7,430,870,688
    parameters) or `random:<hub id or dir>` (that model's config.json, which must be available)."""
    from transformers import AutoConfig, OlmoHybridConfig
    name = spec[len(RANDOM):]
    return OlmoHybridConfig() if name == SHAPES_7B else AutoConfig.from_pretrained(name)


def _random_model(spec: str, dtype: torch.dtype, attn_implementation: str, seed: int) -> PreTrainedModel:
    config = random_config(spec)
    config._attn_implementation = attn_implementation
    # Built on this rank's GPU when there is one: initialising 7B parameters there takes a second,
    # on the CPU minutes. DeepSpeed ZeRO-3 partitions the module afterwards like a loaded one.
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank()}" if cuda else "cpu")
    with torch.random.fork_rng(devices=[device] if cuda else []), device:
        torch.manual_seed(seed)  # seeds this device's generator too: every rank builds the same weights
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.name_or_path = model.config._name_or_path = ""  # no checkpoint holds these weights
    return model


def load_model(source: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
               tokenizer=None, seed: int = 0) -> PreTrainedModel:
    if str(source) == "tiny":
        from posttrain.model.tiny import build_tiny_model
        model = build_tiny_model(tokenizer, seed=seed).to(DTYPES[dtype])
    elif str(source).startswith(RANDOM):
        model = _random_model(str(source), DTYPES[dtype], attn_implementation, seed)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=DTYPES[dtype],
                                                     attn_implementation=attn_implementation)
    if torch.cuda.is_available():
        from posttrain.model.gdn_l2norm import install
        install()  # no GDN norm kernel compiled per sequence length (RL's varying widths)
    if tokenizer is not None:
        model.generation_config.eos_token_id = end_token_ids(tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def usual_file_modes(root: str | Path) -> None:
    """Give every `*.safetensors` under `root` the mode an ordinary new file gets (0o666 less the
    umask, 0644 usually). safetensors >= 0.8 writes through a temp file created 0600 and renames it
    (safetensors/safetensors#782, fix pending in #789), so other users and containers could not
    read the weights while config.json beside them is world-readable."""
    import os
    mask = os.umask(0)
    os.umask(mask)
    for p in Path(root).rglob("*.safetensors"):
        if p.is_file() and not p.is_symlink():
            p.chmod(0o666 & ~mask)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
