"""Data mixes: determinism, manifests, formats, sampling, dedup, malformed rows."""

import json

import pytest

from posttrain.data.formats import canonicalize
from posttrain.data.mix import MixError, resolve_mix


def mixfile(tmp_path, body, name="mix.yaml"):
    p = tmp_path / name
    p.write_text(body)
    return p


def test_same_seed_same_rows_other_seed_other_order(tmp_path):
    body = "seed: {s}\nsources:\n  - path: builtin:arith_think\n    count: 50\n"
    a = resolve_mix(mixfile(tmp_path, body.format(s=1), "a.yaml"))
    b = resolve_mix(mixfile(tmp_path, body.format(s=1), "b.yaml"))
    c = resolve_mix(mixfile(tmp_path, body.format(s=2), "c.yaml"))
    assert a.rows == b.rows and a.manifest["sha256"] == b.manifest["sha256"]
    assert a.manifest["sha256"] != c.manifest["sha256"]
    assert a.manifest["sources"][0]["taken"] == 50 and a.manifest["format"] == "messages"


def test_local_jsonl_parquet_and_saved_dataset_with_column_mapping(tmp_path):
    from datasets import Dataset
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(6)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for src in ("d.jsonl", "d.parquet", "saved"):
        m = resolve_mix(mixfile(tmp_path, f"format: prompt\nsources:\n  - path: {src}\n    columns: "
                                          "{question: prompt, answer: ground_truth}\n"))
        assert len(m.rows) == 6, src
        assert {r["ground_truth"] for r in m.rows} == {str(i) for i in range(6)}
        assert all(r["prompt"] == [{"role": "user", "content": f"q{r['ground_truth']}"}] for r in m.rows)


def test_fraction_upsampling_repeats_every_row_evenly(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) for i in range(4)))
    m = resolve_mix(mixfile(tmp_path, "sources:\n  - path: d.jsonl\n    fraction: 2.5\n"))
    counts = {}
    for r in m.rows:
        counts[r["messages"][0]["content"]] = counts.get(r["messages"][0]["content"], 0) + 1
    assert len(m.rows) == 10 and sorted(counts.values()) == [2, 2, 3, 3]


def test_exact_dedup(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"prompt": "same", "completion": "c"}) for _ in range(3)))
    m = resolve_mix(mixfile(tmp_path, "sources:\n  - path: d.jsonl\n"))
    assert len(m.rows) == 1 and m.manifest["dedup_removed"] == 2


def test_malformed_row_names_file_and_row_unless_skip_invalid(tmp_path):
    lines = [json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
             "{not json", json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
             json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    p = mixfile(tmp_path, "sources:\n  - path: d.jsonl\n")
    with pytest.raises(MixError) as e:
        resolve_mix(p)
    assert str(p) in str(e.value) and "row 1" in str(e.value) and "\n" not in str(e.value)
    m = resolve_mix(mixfile(tmp_path, "skip_invalid: true\nsources:\n  - path: d.jsonl\n", "skip.yaml"))
    assert len(m.rows) == 2 and m.manifest["invalid_dropped"] == 2


@pytest.mark.parametrize("body, msg", [
    ("sources: []\n", "needs at least one source"),
    ("sources:\n  - path: nope.jsonl\n", "file not found"),
    ("sources:\n  - path: builtin:nope\n", "unknown builtin"),
    ("sources:\n  - path: builtin:arith_think\n    count: 1\n    fraction: 0.5\n", "not both"),
    ("wrong: 1\nsources:\n  - path: builtin:arith_think\n", "wrong"),
    ("format: chat\nsources:\n  - path: builtin:arith_think\n", "format"),
])
def test_bad_mix_files(tmp_path, body, msg):
    with pytest.raises(MixError, match=msg):
        resolve_mix(mixfile(tmp_path, body))


@pytest.mark.parametrize("row, fmt, ok", [
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference", True),
    ({"prompt": "p", "chosen": "a"}, "preference", False),
    ({"prompt": "p", "ground_truth": 3}, "prompt", True),
    ({"messages": [{"role": "user", "content": "p"}]}, "messages", False),  # nothing to train on
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}, "messages", False),
])
def test_canonical_formats(row, fmt, ok):
    if ok:
        out = canonicalize(row, fmt)
        assert all(isinstance(v, list) for k, v in out.items() if k in ("prompt", "chosen", "rejected", "messages"))
    else:
        with pytest.raises(ValueError):
            canonicalize(row, fmt)


def test_decontamination_drops_eval_prompts(tmp_path):
    ev = mixfile(tmp_path, "sources:\n  - path: builtin:arith_think\n    split: test\n    count: 20\n", "ev.yaml")
    rows = resolve_mix(ev).rows
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:5] + [
        {"messages": [{"role": "user", "content": "fresh"}, {"role": "assistant", "content": "x"}]}]))
    m = resolve_mix(mixfile(tmp_path, "decontaminate: [ev.yaml]\nsources:\n  - path: d.jsonl\n"))
    assert len(m.rows) == 1 and m.manifest["sources"][0]["filtered"] == 5


def test_builtin_train_and_test_are_disjoint():
    from posttrain.data.builtin import problems
    train = {p["question"] for p in problems("train")}
    assert not train & {p["question"] for p in problems("test")}
