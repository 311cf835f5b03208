"""Benchmark suites through lm-eval on CPU: real-format fixture shards, scoring, a trained tiny export.

Fixture rows follow each dataset card's columns (HuggingFaceH4/MATH-500, HuggingFaceH4/aime_2024,
opencompass/AIME2025, Idavidrein/gpqa, evalplus/humanevalplus, evalplus/mbppplus, google/IFEval,
openai/gsm8k, HuggingFaceH4/mt_bench_prompts) and go through the shipped suite files offline
via the local-file override.
"""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from posttrain import harness, suites
from posttrain.data.templates import TEMPLATES
from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer

pytest.importorskip("lm_eval")

HE_PROMPT = ('from typing import List\n\n\ndef add_all(xs: List[int]) -> int:\n    """Sum of xs.\n'
             '    >>> add_all([1, 2])\n    3\n    """\n')
HE_TEST = ("METADATA = {}\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n"
           "    assert candidate([]) == 0\n    assert candidate([-1, 5, 7]) == 11\n")
MBPP_TEST = ("import math\ninputs = [[3, 4], [0, 0]]\nresults = [5.0, 0.0]\nfor i, (inp, exp) in "
             "enumerate(zip(inputs, results)):\n    assert math.isclose(hyp(*inp), exp)\n")
SHARDS = {
    "math500": [{"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "solution": "...", "answer": "\\frac{3}{4}",
                 "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
                {"problem": "Compute $7 \\cdot 6$.", "solution": "...", "answer": "42", "subject": "Prealgebra",
                 "level": 1, "unique_id": "test/prealgebra/2.json"}],
    "aime24": [{"id": 60, "problem": "Find the remainder when $2^{10}$ is divided by $1000$.", "solution": "...",
                "answer": "24", "url": "https://artofproblemsolving.com/x", "year": "2024"}],
    "aime25": [{"question": "Find the sum of all positive divisors of $28$.", "answer": "56"}],
    "gpqa_diamond": [{"Question": "Which particle carries the electromagnetic force?", "Correct Answer": "Photon",
                      "Incorrect Answer 1": "Gluon", "Incorrect Answer 2": "W boson",
                      "Incorrect Answer 3": "Graviton", "Explanation": "...", "Subdomain": "Physics"}],
    "humanevalplus": [{"task_id": "HumanEval/0", "prompt": HE_PROMPT, "canonical_solution": "    return sum(xs)\n",
                       "entry_point": "add_all", "test": HE_TEST}],
    "mbppplus": [{"task_id": 2, "code": "import math\ndef hyp(a, b):\n    return math.hypot(a, b)",
                  "prompt": "Write a function to find the hypotenuse of a right triangle.", "source_file": "x.py",
                  "test_imports": ["import math"], "test_list": ["assert hyp(3, 4) == 5.0"], "test": MBPP_TEST}],
    "ifeval": [{"key": 1000, "prompt": "Write a short poem about rain. Do not use any commas.",
                "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
               {"key": 1001, "prompt": "Describe a cat in all lowercase letters.",
                "instruction_id_list": ["change_case:english_lowercase"],
                "kwargs": [{"num_highlights": None, "relation": None}]}],
    "gsm8k": [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
               "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"}],
    "mt_bench": [{"prompt": ["Write a haiku about autumn.", "Now make it rhyme."], "prompt_id": 81,
                  "category": "writing", "reference": []}],
}
RIGHT = {
    "math500": "<think>half plus quarter</think>The answer is $\\boxed{\\frac{3}{4}}$.",
    "aime24": "<think>1024 mod 1000</think>\\boxed{24}",
    "aime25": "<think>1+2+4+7+14+28</think>\\boxed{56}",
    "gpqa_diamond": None,  # filled from the shuffled letter
    "humanevalplus": "```python\ndef add_all(xs: List[int]) -> int:\n    return sum(xs)\n```",
    "mbppplus": "```python\nimport math\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b)\n```",
    "ifeval": "Soft rain on the roof\nquiet streets and gray skies",
    "gsm8k": "3 + 4 = 7, so \\boxed{7}.",
}
WRONG = {
    "math500": "<think>the answer is \\boxed{\\frac{3}{4}} maybe", # never closed: no answer at all
    "aime24": "\\boxed{1024}",
    "aime25": "\\boxed{55}",
    "gpqa_diamond": "Answer: Z",
    "humanevalplus": "```python\ndef add_all(xs):\n    return len(xs)\n```",
    "mbppplus": "```python\ndef hyp(a, b):\n    return a + b\n```",
    "ifeval": "Soft rain, on the roof",
    "gsm8k": "\\boxed{12}",
}


def write_shards(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, rows in SHARDS.items():
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("evaldata"))


def small_suite(tmp: Path, name: str, **over) -> Path:
    """A shipped suite with CPU-sized budgets (same tasks, formats, datasets and scorers)."""
    cfg = OmegaConf.load(suites.SUITES_DIR / f"{name}.yaml")
    cfg.max_new_tokens, cfg.seeds = 6, [0, 1]
    for t in cfg.tasks.values():
        t.samples = min(t.get("samples", 1), 2)
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    p = tmp / f"{name}-small.yaml"
    OmegaConf.save(cfg, p)
    return p


@pytest.mark.parametrize("suite", ["think", "instruct"])
def test_shipped_suites_read_the_benchmarks_real_columns(suite, data_dir):
    s = suites.load_suite(suite)
    for name, spec in s.tasks.items():
        rows, src = suites.load_rows(name, spec, data_dir)
        assert src.endswith(f"{name}.jsonl")
        docs = suites.build_docs(name, spec, rows, src)
        assert len(docs) == len(SHARDS[name]) and all(d["prompt"].strip() for d in docs)


@pytest.mark.parametrize("task", sorted(WRONG))
def test_scorers_on_known_right_and_wrong_completions(task, data_dir):
    spec = suites.load_suite("think" if task in ("aime24", "aime25", "gpqa_diamond") else "instruct").tasks[task]
    doc = suites.build_docs(task, spec, [SHARDS[task][0]], "x")[0]
    ref = json.loads(doc["ref"])
    right = RIGHT[task] or f"<think>photons</think>Answer: {ref['answer']}"
    scores = suites.SCORERS[spec.scorer]([right, WRONG[task]], ref)
    assert scores == [1.0, 0.0], (task, scores)


def test_bad_rows_and_fields_are_one_line_errors(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("tasks:\n  m:\n    dataset: x/y\n    format: maths\n")
    with pytest.raises(suites.SuiteError, match=r"s.yaml: tasks.m.format: 'maths'"):
        suites.load_suite(str(bad))
    bad.write_text("tasks:\n  m:\n    dataset: x/y\n    samples: 0\n")
    with pytest.raises(suites.SuiteError, match="tasks.m.samples"):
        suites.load_suite(str(bad))
    (tmp_path / "math500.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    spec = suites.load_suite("think").tasks["math500"]
    rows, src = suites.load_rows("math500", spec, tmp_path)
    with pytest.raises(suites.SuiteError, match=r"math500.jsonl: row 1: .*needs column 'problem'"):
        suites.build_docs("math500", spec, rows, src)


def _save(model, tok, d: Path) -> Path:
    model.save_pretrained(d, save_original_format=False)
    tok.save_pretrained(d)
    return d


def test_think_suite_end_to_end_through_lm_eval(tmp_path, data_dir):
    """Every Think task through lm-eval with a random tiny model: records, seeds x samples, SE."""
    tok = build_tiny_tokenizer("olmo-think")
    d = _save(build_tiny_model(tok, seed=3), tok, tmp_path / "m")
    summary = harness.run_eval(d, str(small_suite(tmp_path, "think")), data_dir=data_dir, batch_size=8)
    res = json.loads((d / "evals" / "think" / "m.json").read_text())
    assert set(res["tasks"]) == set(suites.load_suite("think").tasks)
    aime = res["tasks"]["aime24"]
    assert aime["n"] == 1 and aime["completions"] == 4 and len(aime["seed_scores"]) == 2  # 2 seeds x 2 samples
    assert res["tasks"]["math500"]["n"] == 2 and res["tasks"]["math500"]["stderr"] == 0.0
    assert summary["results"]["m"]["ifeval"]["n"] == 2
    assert all(t["examples"][0]["completion"].startswith("<think>") for t in res["tasks"].values())
    # A random model never closes <think>: score 0 with nothing answered is flagged, not silently 0.
    assert res["tasks"]["math500"]["answered"] == 0 and "chat template" in res["tasks"]["math500"]["warning"]


# ---- a trained tiny export must score above 0 through the same path --------------------------------
QA = [(f"What is {a} + {b}?", a + b) for a, b in [(3, 4), (12, 5), (20, 7), (8, 9)]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Think model taught four sums (16 steps, ~10 s on 2 idle cores): only the chat template leads it to them."""
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok, seed=0)
    rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": f"<think>{s}</think>The answer is {s}."}]
            for q, s in QA]
    texts = [tok.apply_chat_template(r, tokenize=False) for r in rows]
    prompts = [len(tok(tok.apply_chat_template(r[:1], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]) for r in rows]
    tok.padding_side = "right"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for i, n in enumerate(prompts):  # loss on the answer only (the template's <think> included)
        labels[i, :n - 1] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(16):  # 4/4 right from ~step 19, 3/4 at 15 (loss on the answer only)
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    tok.padding_side = "left"
    root = tmp_path_factory.mktemp("trained")
    _save(model, tok, root / "model")
    data = root / "data"
    data.mkdir()
    (data / "arithmetic.jsonl").write_text("".join(json.dumps(
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ""}], "ground_truth": str(s)})
        + "\n" for q, s in QA))
    return root


def test_run_dir_scores_each_export_beside_the_stage_before_it(trained, tmp_path):
    """The trained tiny export must score above 0 on its arithmetic through the suite path: a
    template or think-stripping bug there scores exactly 0 and fails this test."""
    from tests.test_export import make_run
    run = make_run(tmp_path, stages=("sft", "rl"))
    exp = run / "exports" / "think"
    _save(*harness.load_target(harness.Target("x", trained / "model", TEMPLATES["olmo-think"], "k"), "float32"), exp)
    (exp / "export.json").write_text(json.dumps({"run": str(run), "stage": "rl", "stage_key": "keyrl", "kind": "think"}))
    out, pairs = harness.resolve_targets(run)
    assert out == run / "evals" and [(t.label, p.label) for t, p in pairs] == [("export:think", "sft")]
    summary = harness.run_eval(run, str(small_suite(tmp_path, "tiny", max_new_tokens=24, seeds=[0])),
                               data_dir=trained / "data", batch_size=8)
    r = summary["results"]["export:think"]["arithmetic"]
    assert r["score"] > 0 and r["answered"] > 0, r
    assert "sft" in summary["results"]  # the previous stage, scored the same way
    from posttrain.report import write_report
    assert "Benchmark suites" in write_report(run).read_text()


def test_recipe_benchmarks_and_rl_local_eval_are_checked_and_leave_stage_keys_alone(tmp_path, monkeypatch):
    from posttrain.pipeline import Pipeline
    from posttrain.recipe import RecipeError, load_recipe
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    with pytest.raises(RecipeError, match=r"benchmarks.0.after: 'nope'"):
        load_recipe("tiny", ["benchmarks=[{suite: tiny, after: nope}]"])
    with pytest.raises(RecipeError, match=r"benchmarks.0.suite: suite 'nosuch'"):
        load_recipe("tiny", ["benchmarks=[{suite: nosuch}]"])
    with pytest.raises(RecipeError, match=r"stages.rl.local_eval_suite"):
        load_recipe("tiny", ["stages.rl.local_eval_every=4", "stages.rl.local_eval_suite=nosuch"])
    plain = Pipeline(load_recipe("tiny", [f"output_dir={tmp_path}"]))
    watched = Pipeline(load_recipe("tiny", [f"output_dir={tmp_path}", "stages.rl.local_eval_every=4",
                                            "benchmarks=[{suite: tiny, after: rl}]"]))
    assert [p.key for p in plain.plan()] == [p.key for p in watched.plan()]  # observing never reruns a stage


def test_rl_local_eval_callback_logs_every_n_steps(trained, tmp_path):
    from types import SimpleNamespace
    from posttrain.metrics import MetricsWriter, read_metrics
    from posttrain.recipe import EvalConfig
    from posttrain.stages.local_eval import local_eval_callbacks
    model, tok = harness.load_target(harness.Target("x", trained / "model", TEMPLATES["olmo-think"], "k"), "float32")
    rows = [json.loads(x) for x in (trained / "data" / "arithmetic.jsonl").read_text().splitlines()]
    stage = SimpleNamespace(local_eval_every=2, local_eval_examples=4, local_eval_suite=None,
                            eval=EvalConfig(max_new_tokens=24, batch_size=8))
    ctx = SimpleNamespace(stage=stage, name="rl", eval_rows=rows, metrics=MetricsWriter(tmp_path / "m.jsonl"),
                          chat_template=TEMPLATES["olmo-think"])
    (cb,) = local_eval_callbacks(ctx, tok)
    for step in (1, 2):
        cb.on_step_end(None, SimpleNamespace(global_step=step, is_world_process_zero=True), None, model=model)
    recs = read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in recs] == [2] and recs[0]["local_eval/accuracy"] > 0
    assert local_eval_callbacks(SimpleNamespace(stage=SimpleNamespace(local_eval_every=0)), tok) == []
