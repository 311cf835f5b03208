"""Benchmark suites through lm-eval on CPU: real-format fixture shards, scoring, a trained tiny export.

Fixture rows follow each dataset card's columns (HuggingFaceH4/MATH-500, HuggingFaceH4/aime_2024,
opencompass/AIME2025, Idavidrein/gpqa, evalplus/humanevalplus, evalplus/mbppplus, google/IFEval,
openai/gsm8k, HuggingFaceH4/mt_bench_prompts; sources in suites/*.yaml) and go through the
shipped suite files offline via the local-file override. The judge path runs against a stub
OpenAI-compatible server on a real socket; scripted completions pin down think stripping, avg@k
and the standard error.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from posttrain import harness, suites
from posttrain.data.templates import TEMPLATES
from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer

pytest.importorskip("lm_eval")

# EvalPlus's test scripts, as its converters write them for the hub (evalplus/evalplus
# tools/humaneval/to_original_fmt.py and tools/mbpp/to_original_fmt.py at 5f4ebca, the commit the
# hub sets were last regenerated from): numpy's float-tolerant `assertion`, then EvalPlus's inputs
# and expected results. HumanEval+ defines check(candidate) and leaves the call to the harness;
# MBPP+ calls the function by name. Inputs here are a few of the real ones.
EVALPLUS_ASSERTION = """import numpy as np

def is_floats(x) -> bool:
    # check if it is float; List[float]; Tuple[float]
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    if isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def assertion(out, exp, atol):
    exact_match = out == exp

    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact_match and atol != 0:
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert exact_match
"""
HE_PROMPT = ('from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'
             '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
             '    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n'
             '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n')
HE_TEST = ("\n\n" + EVALPLUS_ASSERTION + "\n\ndef check(candidate):\n"
           "    inputs = [[[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3], [[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05], "
           "[[1.0, 2.0, 5.9, 4.0, 5.0], 0.95], [[1.0, 2.0, 5.9, 4.0, 5.0], 0.8], [[1.1, 2.2, 3.1, 4.1, 5.1], 1.0]]\n"
           "    results = [True, False, True, False, True]\n"
           "    for i, (inp, exp) in enumerate(zip(inputs, results)):\n        assertion(candidate(*inp), exp, 0)\n")
MBPP_TEST = ("import numpy as np\nfrom math import inf\n\n" + EVALPLUS_ASSERTION.split("\n", 2)[2] + "\n\n"
             "inputs = [[(3, 4, 5, 6), (5, 7, 4, 10)], [(1, 2, 3, 4), (5, 4, 3, 7)], [(11, 12, 14, 13), (17, 15, 14, 13)]]\n"
             "results = [(4, 5), (3, 4), (13, 14)]\n"
             "for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion(similar_elements(*inp), exp, 0)\n")
# google/IFEval through `datasets`: every kwargs dict carries the union of the 24 argument names
# (the card's features), unused ones None; the raw ifeval_input_data.jsonl has only the used ones.
IFEVAL_KWARGS = ["num_highlights", "relation", "num_words", "num_placeholders", "prompt_to_repeat", "num_bullets",
                 "section_spliter", "num_sections", "capital_relation", "capital_frequency", "keywords",
                 "num_paragraphs", "language", "let_relation", "letter", "let_frequency", "end_phrase",
                 "forbidden_words", "keyword", "frequency", "num_sentences", "postscript_marker", "first_word",
                 "nth_paragraph"]


def hub_ifeval(row: dict) -> dict:
    return {**row, "kwargs": [{k: kw.get(k) for k in IFEVAL_KWARGS} for kw in row["kwargs"]]}


def mt_bench_row(turns: list[str], category: str, reference: list[str]) -> dict:
    # prompt_id as HuggingFaceH4/mt_bench_prompts' card computes it.
    pid = int(hashlib.sha256("".join(turns).encode("utf-8")).hexdigest(), 16) % (10 ** 8)
    return {"prompt": turns, "prompt_id": pid, "category": category, "reference": reference}


# A few rows of each benchmark in its hub columns (cards cited in suites/think.yaml and instruct.yaml);
# the first rows are real ones (MATH-500's first, AIME 2024 I/1, AIME 2025 I/1, HumanEval/0, MBPP 2, IFEval
# 1000/1001, GSM8K test 0, MT-Bench 81/111), problem texts shortened where marked; GPQA's is made up
# (the set is gated and asks not to be published).
SHARDS = {
    "math500": [{"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your "
                            "answer in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
                 "solution": "...", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus",
                 "level": 2, "unique_id": "test/precalculus/807.json"},
                {"problem": "Compute $7 \\cdot 6$.", "solution": "...", "answer": "42", "subject": "Prealgebra",
                 "level": 1, "unique_id": "test/prealgebra/2.json"}],
    "aime24": [{"id": 60, "problem": "Every morning Aya goes for a $9$-kilometer-long walk and stops at a coffee shop "
                "afterwards. [...] Suppose Aya walks at $s+\\frac{1}{2}$ kilometers per hour. Find the number of "
                "minutes the walk takes her, including the $t$ minutes spent in the coffee shop.",
                "solution": "...", "answer": "204",
                "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1", "year": "2024"}],
    "aime25": [{"question": "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$.",
                "answer": "70"}],
    "gpqa_diamond": [{"Record ID": "rec0", "High-level domain": "Physics", "Subdomain": "Particle Physics",
                      "Question": "Which particle carries the electromagnetic force?", "Correct Answer": "Photon",
                      "Incorrect Answer 1": "Gluon", "Incorrect Answer 2": "W boson",
                      "Incorrect Answer 3": "Graviton", "Explanation": "..."}],
    "humanevalplus": [{"task_id": "HumanEval/0", "prompt": HE_PROMPT,
                       "canonical_solution": "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in "
                       "enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - elem2)\n"
                       "                if distance < threshold:\n                    return True\n\n    return False\n",
                       "entry_point": "has_close_elements", "test": HE_TEST}],
    "mbppplus": [{"task_id": 2, "code": "\ndef similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) "
                  "& set(test_tup2))\n", "prompt": "Write a function to find the shared elements from the given two lists.",
                  "source_file": "Benchmark Questions Verification V2.ipynb", "test_imports": [],
                  "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                                "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
                                "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))"],
                  "test": MBPP_TEST}],
    "ifeval": [{"key": 1000, "prompt": "Write a 300+ word summary of the wikipedia page \"https://en.wikipedia.org/wiki/"
                "Raymond_III,_Count_of_Tripoli\". Do not use any commas and highlight at least 3 sections that has "
                "titles in markdown format, for example *highlighted section part 1*, *highlighted section part 2*, "
                "*highlighted section part 3*.",
                "instruction_id_list": ["punctuation:no_comma", "detectable_format:number_highlighted_sections",
                                        "length_constraints:number_words"],
                "kwargs": [{}, {"num_highlights": 3}, {"relation": "at least", "num_words": 300}]},
               hub_ifeval({"key": 1001, "prompt": "I am planning a trip to Japan, and I would like thee to write an "
                           "itinerary for my journey in a Shakespearean style. You are not allowed to use any commas "
                           "in your response.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})],
    "gsm8k": [{"question": "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
               "bakes muffins for her friends every day with four. She sells the remainder at the farmers' market "
               "daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?",
               "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 "
               "every day at the farmer\u2019s market.\n#### 18"}],
    "mt_bench": [mt_bench_row(["Compose an engaging travel blog post about a recent trip to Hawaii, highlighting "
                               "cultural experiences and must-see attractions.",
                               "Rewrite your previous response. Start every sentence with the letter A."], "writing", []),
                 mt_bench_row(["The vertices of a triangle are at points (0, 0), (-1, 1), and (3, 3). What is the "
                               "area of the triangle?", "What's area of the circle circumscribing the triangle?"],
                              "math", ["Area is 3", "5pi"])],
}
SUMMARY = " ".join(["Raymond was a count in the Levant and his life is told here in plain words."] * 22)
RIGHT = {
    "math500": "<think>r = 3, theta = pi/2</think>The answer is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
    "aime24": "<think>s = 2.5 so 3 hours 24 minutes</think>\\boxed{204}",
    "aime25": "<think>b + 7 divides 56</think>\\boxed{70}",
    "gpqa_diamond": None,  # filled from the shuffled letter
    "humanevalplus": "```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                     "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
                     "               for j, b in enumerate(numbers) if i != j)\n```",
    "mbppplus": "```python\ndef similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) & set(test_tup2))\n```",
    "ifeval": f"*Early life* *Regency* *Legacy*\n{SUMMARY}",
    "gsm8k": "16 - 3 - 4 = 9 eggs, 9 * 2 = 18, so \\boxed{18}.",
}
WRONG = {
    "math500": "<think>the answer is \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)} maybe",  # never closed: no answer
    "aime24": "\\boxed{240}",
    "aime25": "<think>\\boxed{70}</think>\\boxed{7}",  # the reasoning's answer is not the answer
    "gpqa_diamond": "Answer: Z",
    "humanevalplus": "```python\ndef has_close_elements(numbers, threshold):\n    return len(numbers) > 1\n```",
    "mbppplus": "```python\ndef similar_elements(test_tup1, test_tup2):\n  return tuple(test_tup1)\n```",
    "ifeval": f"*Early life*, *Regency* *Legacy*\n{SUMMARY}",
    "gsm8k": "\\boxed{16}",
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


def test_ifeval_scores_the_hub_form_and_the_raw_jsonl_form_alike():
    """`datasets` gives every kwargs dict all 24 names (unused None); Google's jsonl only the used ones."""
    spec = suites.load_suite("instruct").tasks["ifeval"]
    raw, hub = SHARDS["ifeval"][0], hub_ifeval(SHARDS["ifeval"][0])
    assert hub["kwargs"][1]["num_highlights"] == 3 and hub["kwargs"][1]["num_words"] is None
    for row in (raw, hub, SHARDS["ifeval"][1]):
        ref = json.loads(suites.build_docs("ifeval", spec, [row], "x")[0]["ref"])
        right = RIGHT["ifeval"] if row["key"] == 1000 else "Hark! To Kyoto we ride and thence to Nara."
        assert suites.SCORERS["ifeval"]([right, WRONG["ifeval"]], ref) == [1.0, 0.0], row["key"]


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
    assert aime["stderr"] is None and " ± -" in harness.format_summary(summary)  # one question: no SE
    for f in (d / "evals" / "think").glob("*.json"):  # strict JSON: NaN/Infinity would not parse elsewhere
        json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f.name}: {c} in JSON"))
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
    with pytest.raises(RecipeError, match=r"benchmarks.0.judge_model: needed with judge_url"):
        load_recipe("tiny", ["benchmarks=[{suite: instruct, judge_url: 'http://127.0.0.1:8001/v1'}]"])
    with pytest.raises(RecipeError, match=r"benchmarks.0.judge_url: '127.0.0.1:8001' is not an http"):
        load_recipe("tiny", ["benchmarks=[{suite: instruct, judge_url: '127.0.0.1:8001', judge_model: m}]"])
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
