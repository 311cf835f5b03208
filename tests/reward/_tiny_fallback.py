"""Throwaway tiny model for the judge test if posttrain.model.tiny is not importable.

Byte-level tokenizer (256 bytes + ChatML tokens) and a 4-layer OlmoHybrid, built in code.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM, PreTrainedTokenizerFast

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_tokenizer():
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def build_tiny_model(tokenizer, seed=0):
    import torch

    torch.manual_seed(seed)
    cfg = OlmoHybridConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    return OlmoHybridForCausalLM(cfg)
