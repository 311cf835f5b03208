"""Dolci formats in data mixes: the format comes from every row's columns, tool rows keep their fields,
whole-conversation DPO pairs render the prompt once, RL rows take messages or a flat prompt."""

import json
from pathlib import Path

import pytest

from posttrain.data.formats import format_from_columns
from posttrain.data.mix import MixError, resolve_mix

DOLCI = Path(__file__).resolve().parent / "fixtures" / "dolci"


def _mix(tmp_path, rows_by_source: list[list[dict]], extra: str = "") -> Path:
    srcs = ""
    for i, rows in enumerate(rows_by_source):
        f = tmp_path / f"s{i}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        srcs += f"  - path: {f}\n"
    p = tmp_path / "mix.yaml"
    p.write_text(f"name: m\n{extra}sources:\n{srcs}")
    return p


@pytest.mark.parametrize("cols,fmt", [
    ({"messages"}, "messages"), ({"messages", "ground_truth"}, "messages"),
    ({"messages", "ground_truth", "dataset"}, "prompt"), ({"messages", "ground_truth", "verifier"}, "prompt"),
    ({"prompt", "completion"}, "messages"), ({"prompt", "ground_truth"}, "prompt"),
    ({"prompt", "source_prompt", "ground_truth", "dataset"}, "prompt"),
    ({"chosen", "rejected"}, "preference"), ({"prompt", "chosen", "rejected"}, "preference"),
])
def test_format_from_columns(cols, fmt):
    assert format_from_columns(cols) == fmt


def test_tool_rows_keep_their_fields_and_none_fields_go():
    rows = resolve_mix(DOLCI / "instruct_sft.yaml").rows
    tool = next(r for r in rows if r["id"] == "inst-sft-2")["messages"]
    assert [m["role"] for m in tool] == ["system", "user", "assistant", "environment", "assistant"]
    assert "get_weather" in tool[0]["functions"] and tool[2]["function_calls"] == 'get_weather(city="Paris")'
    call_only = next(r for r in rows if r["id"] == "inst-sft-3")["messages"][1]
    assert call_only["content"] is None and "functions" not in call_only


def test_whole_conversation_pairs_split_once():
    for name in ("instruct_dpo", "think_dpo"):
        for r in resolve_mix(DOLCI / f"{name}.yaml").rows:
            assert r["prompt"] and r["prompt"][-1]["role"] == "user"
            assert [m["role"] for m in r["chosen"]] == ["assistant"] == [m["role"] for m in r["rejected"]]
            assert r["chosen"] != r["rejected"]
    multi = next(r for r in resolve_mix(DOLCI / "instruct_dpo.yaml").rows if r["prompt_id"] == "p2")
    assert [m["content"] for m in multi["prompt"]] == ["Hi", "Hello! How can I help?", "Count to three."]


def test_rl_prompts_from_messages_or_flat_prompt():
    think = {r["id"]: r for r in resolve_mix(DOLCI / "think_rl.yaml").rows}
    assert think["trl-1"]["prompt"] == [{"role": "user", "content": "What is 5 * 5?"}]  # the answer turn dropped
    assert think["trl-0"]["ground_truth"] == ["42"] and think["trl-0"]["verifier"] == ["math"]
    inst = resolve_mix(DOLCI / "instruct_rl.yaml").rows
    assert sorted(r["prompt"][0]["content"] for r in inst) == ["What is 100 - 1?", "What is 3 cubed?"]
    assert all(len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" for r in inst)


def test_format_is_not_guessed_from_the_first_row(tmp_path):
    # First row has no verifier columns; later ones do: the source is RL prompts, and the first row loads.
    rows = [{"messages": [{"role": "user", "content": "a"}]},
            {"messages": [{"role": "user", "content": "b"}], "ground_truth": ["1"], "dataset": ["math"]}]
    m = resolve_mix(_mix(tmp_path, [rows]))
    assert m.format == "prompt" and m.manifest["rows"] == 2


def test_a_row_of_another_format_is_an_error_naming_it(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 2 + \
           [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    with pytest.raises(MixError, match=r"row 0: .*'messages' row, but the source's format is 'preference'"):
        resolve_mix(_mix(tmp_path, [rows]))


def test_sources_of_different_formats_are_an_error(tmp_path):
    sft = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    dpo = [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    with pytest.raises(MixError, match=r"sources.1 .*'preference' source, but earlier sources are 'messages'"):
        resolve_mix(_mix(tmp_path, [sft, dpo]))


def test_pairs_whose_prompts_differ_are_an_error(tmp_path):
    row = {"chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "x"}],
           "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "y"}]}
    with pytest.raises(MixError, match="differ before their last message"):
        resolve_mix(_mix(tmp_path, [[row]]))


def test_parquet_rows_with_null_fields_load(tmp_path):
    from datasets import Dataset
    rows = [json.loads(line) for line in (DOLCI / "instruct_sft.jsonl").read_text().splitlines()]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "sft.parquet"))  # every message gets every field
    (tmp_path / "m.yaml").write_text(f"sources:\n  - path: {tmp_path / 'sft.parquet'}\n")
    got = {r["id"]: r for r in resolve_mix(tmp_path / "m.yaml").rows}
    want = {r["id"]: r for r in resolve_mix(DOLCI / "instruct_sft.yaml").rows}
    assert got.keys() == want.keys() and all(got[k]["messages"] == want[k]["messages"] for k in got)
