"""olmo3-instruct / olmo3-think render exactly what open-instruct's olmo / olmo_thinker render, with
the real Olmo tokenizer (dolma2, shipped offline), and their generation markers mask the right text."""

import importlib.util
import json
from pathlib import Path

import pytest

from posttrain.data.mix import resolve_mix
from posttrain.data.templates import NO_DEFAULT_SYSTEM, generation_prefix, resolve_template
from posttrain.model import dolma2
from posttrain.model.load import end_token_ids, load_tokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_spec = importlib.util.spec_from_file_location("oi_templates", FIXTURES / "open_instruct_templates.py")
OI = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(OI)
PAIRS = [("olmo3-instruct", "olmo"), ("olmo3-think", "olmo_thinker")]

FUNCS = json.dumps([{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}])
U = lambda c, **k: {"role": "user", "content": c, **k}
A = lambda c, **k: {"role": "assistant", "content": c, **k}
S = lambda c, **k: {"role": "system", "content": c, **k}
E = lambda c: {"role": "environment", "content": c}
CONVERSATIONS = {
    "one user turn": [U("What is 2+2?")],
    "user, answer": [U("What is 2+2?"), A("4")],
    "system, user, answer": [S("Be brief."), U("Hi"), A("Hello.")],
    "system only": [S("You are a cat.")],
    "multi-turn": [U("a"), A("b"), U("c"), A("d"), U("e")],
    "multi-turn ending in assistant": [S("s"), U("a"), A("b"), U("c"), A("d")],
    "think content": [U("6*7?"), A("<think>6*7=42</think>The answer is 42.")],
    "think with newlines": [U("6*7?"), A("<think>\n6*7=42.\n</think>\n\n42")],
    "system with functions": [S("Use tools.", functions=FUNCS), U("Find cats"), A("", function_calls='lookup(q="cats")'),
                              E('{"hits": 3}'), A("3 hits.")],
    "user with functions": [U("Find dogs", functions=FUNCS), A(None, function_calls='lookup(q="dogs")'),
                            E("[]"), A("Nothing found.")],
    "call then think": [S("t", functions="[]"), U("go"), A("<think>call it</think>", function_calls="f()"), E("ok")],
    "empty contents": [S(""), U(""), A("")],
    "unicode and quotes": [U("Ünïcødé 'quotes' \"double\" {{ jinja }} {% raw %}"), A("ok ✓")],
    "two system messages": [S("one"), S("two"), U("u"), A("a")],
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("olmo3", "")


def render(tok, template, conv, gen):
    tok.chat_template = template
    return tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)


def test_dolma2_tokenizer_is_the_olmo_tokenizer(tok):
    assert len(tok) == dolma2.VOCAB_SIZE == 100278
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")}
    assert ids == {"<|endoftext|>": 100257, "<|im_start|>": 100264, "<|im_end|>": 100265, "<|pad|>": 100277}
    assert (tok.eos_token_id, tok.pad_token_id) == (100257, 100277)
    assert set(end_token_ids(tok)) == {100257, 100265}
    # No <think> token: plain BPE pieces, and </think> splits differently after different text.
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    assert len(enc("<think>")) > 1 and len(enc("</think>")) > 1
    assert enc("a</think>")[1:] != enc(".</think>")[1:]
    assert tok.decode(enc("x<think>y</think>z"), skip_special_tokens=True) == "x<think>y</think>z"


@pytest.mark.parametrize("name,oi_name", PAIRS)
@pytest.mark.parametrize("conv", list(CONVERSATIONS.values()), ids=list(CONVERSATIONS))
@pytest.mark.parametrize("gen", [False, True])
def test_renders_equal_open_instruct(tok, name, oi_name, conv, gen):
    ours, theirs = render(tok, resolve_template(name), conv, gen), render(tok, OI.CHAT_TEMPLATES[oi_name], conv, gen)
    assert ours == theirs
    assert tok(ours, add_special_tokens=False)["input_ids"] == tok(theirs, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name,oi_name", PAIRS)
def test_dolci_fixture_rows_render_equal_after_the_mix(tok, name, oi_name):
    """Rows as the mixes hand them to stages (None fields dropped, tool fields kept) render as AI2's."""
    for mix in ("instruct_sft", "think_sft"):
        for row in resolve_mix(FIXTURES / "dolci" / f"{mix}.yaml").rows:
            conv = row["messages"]
            assert render(tok, resolve_template(name), conv, False) == render(tok, OI.CHAT_TEMPLATES[oi_name], conv, False)


def test_generation_prompt(tok):
    conv = [U("hi")]
    assert render(tok, resolve_template("olmo3-think"), conv, True).endswith("<|im_start|>assistant\n<think>")
    assert render(tok, resolve_template("olmo3-instruct"), conv, True).endswith("<|im_start|>assistant\n")
    assert generation_prefix(resolve_template("olmo3-think")) == "<think>"
    assert generation_prefix(resolve_template("olmo3-instruct")) == ""
    assert generation_prefix(resolve_template("olmo-think")) == "<think>"  # the tiny demo's, written with '\\n'


@pytest.mark.parametrize("name", ["olmo3-instruct", "olmo3-think"])
def test_generation_markers_mask_assistant_turns(tok, name):
    tok.chat_template = resolve_template(name)
    conv = CONVERSATIONS["system with functions"][:3] + [E("{}"), A("<think>\nso</think>done")]
    enc = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == '<function_calls>lookup(q="cats")</function_calls><|im_end|><think>\nso</think>done<|endoftext|>'
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "Find cats" in untrained and "<functions>" in untrained and "environment\n{}" in untrained
    assert "<think>" not in untrained and "<|endoftext|>" not in untrained


@pytest.mark.parametrize("name,oi_name", PAIRS)
def test_default_system_text_is_a_recipe_choice(tok, name, oi_name):
    conv = [U("hi"), A("yo")]
    custom = render(tok, resolve_template(name, "You are Olmo.\nBe 'kind' \\ é."), conv, False)
    given = render(tok, OI.CHAT_TEMPLATES[oi_name], [S("You are Olmo.\nBe 'kind' \\ é.")] + conv, False)
    assert custom == given  # a custom default renders as that text given as a system message
    none = render(tok, resolve_template(name, NO_DEFAULT_SYSTEM), conv, False)
    assert none == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|endoftext|>"
    # a conversation with its own system message is untouched by the choice
    conv_s = [S("mine")] + conv
    assert render(tok, resolve_template(name, "other"), conv_s, False) == render(tok, OI.CHAT_TEMPLATES[oi_name], conv_s, False)


def test_default_system_only_for_olmo3():
    with pytest.raises(ValueError, match="chat_template_system"):
        resolve_template("olmo-think", "x")


def test_exports_carry_the_olmo3_family(tmp_path, tok):
    """A stage trained with olmo3-think ships olmo3-think as Think and olmo3-instruct as Instruct, markers
    stripped, rendering exactly what open-instruct's templates render."""
    from posttrain.data.templates import TEMPLATES
    from posttrain.export import shipped_template, training_template
    (tmp_path / "chat_template.jinja").write_text(TEMPLATES["olmo3-think"])
    assert training_template(tmp_path, "think") == TEMPLATES["olmo3-think"]
    assert training_template(tmp_path, "instruct") == TEMPLATES["olmo3-instruct"]
    for kind, oi_name in (("think", "olmo_thinker"), ("instruct", "olmo")):
        shipped = shipped_template(training_template(tmp_path, kind))
        assert "{% generation %}" not in shipped and "{% endgeneration %}" not in shipped
        for conv in CONVERSATIONS.values():
            assert render(tok, shipped, conv, True) == render(tok, OI.CHAT_TEMPLATES[oi_name], conv, True)


def test_rl_completion_decoding_and_think_rewards_with_bpe_think(tok):
    """GRPO with olmo3-think: the prompt ends in '<think>' (several BPE tokens); TRL decodes the completion's
    ids with skip_special_tokens=True; the stage puts the prefix back before the rewards strip the thought."""
    from posttrain.stages.rl import with_prefix
    from reward.format import format_think
    from reward.math import math_reward
    prefix = generation_prefix(resolve_template("olmo3-think"))
    completions = []
    for body in ("\n2+2=4.\n</think>\n\nThe answer is 4.", "2+2 is 4.</think>The answer is 4.", "hm.</think>The answer is 5."):
        ids = tok(body + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert tok.convert_tokens_to_ids("<|im_end|>") == ids[-1]
        completions.append(tok.decode(ids, skip_special_tokens=True))
    assert completions[0] == "\n2+2=4.\n</think>\n\nThe answer is 4."
    scored = with_prefix(lambda completions, **kw: list(completions), prefix)(completions)
    assert all(c.startswith("<think>") for c in scored)
    assert math_reward(scored, ground_truth=[["4"], "4", ["4", "5"]]) == [1.0, 1.0, 1.0]
    assert with_prefix(format_think, prefix)(completions) == [1.0, 1.0, 1.0]
    assert math_reward(["<think>The answer is 4.</think>The answer is 5."], ground_truth=["4"]) == [0.0]
