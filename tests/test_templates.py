"""Chat templates: only assistant tokens carry loss; <think> is one token and is not masked out."""

import pytest

from posttrain.data.templates import TEMPLATES
from posttrain.model.tiny import build_tiny_tokenizer

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "<think>2+3=5</think>5"},
        {"role": "user", "content": "and 4+4?"}, {"role": "assistant", "content": "<think>4+4=8</think>8"}]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_only_assistant_turns_carry_loss(name):
    tok = build_tiny_tokenizer(name)
    enc = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "<think>2+3=5</think>5<|im_end|><think>4+4=8</think>8<|im_end|>"
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "Be brief." in untrained and "2+3?" in untrained and "<think>" not in untrained


def test_think_is_one_token_and_trained(tiny_tok):
    enc = tiny_tok.apply_chat_template(CONV[1:3], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    think_id = tiny_tok.convert_tokens_to_ids("<think>")
    pos = [i for i, t in enumerate(enc["input_ids"]) if t == think_id]
    assert len(pos) == 1 and enc["assistant_masks"][pos[0]] == 1
    for special in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"):
        assert len(tiny_tok(special, add_special_tokens=False)["input_ids"]) == 1, special


def test_generation_prompt_opens_think_only_for_think():
    think = build_tiny_tokenizer("olmo-think").apply_chat_template(CONV[1:2], tokenize=False, add_generation_prompt=True)
    inst = build_tiny_tokenizer("olmo-instruct").apply_chat_template(CONV[1:2], tokenize=False, add_generation_prompt=True)
    assert think.endswith("<|im_start|>assistant\n<think>") and inst.endswith("<|im_start|>assistant\n")


def test_decode_joins_characters(tiny_tok):
    text = "Ana has 12 pens.\nThe answer is 5."
    assert tiny_tok.decode(tiny_tok(text, add_special_tokens=False)["input_ids"]) == text


def test_think_tags_survive_skip_special_tokens(tiny_tok):
    """TRL decodes completions with skip_special_tokens=True; rewards need the think tags."""
    ids = tiny_tok("<think>1+1=2</think>The answer is 2.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tiny_tok.decode(ids, skip_special_tokens=True) == "<think>1+1=2</think>The answer is 2."
