"""Run a benchmark suite on a model through EleutherAI's lm-evaluation-harness (`lm_eval`).

    posttrain eval EXPORT_OR_RUN --suite think|instruct|tiny|FILE [--backend hf|vllm] [--data-dir DIR]

lm-eval does what a harness is for: the export's own chat template (`apply_chat_template`),
batched generation with transformers (CPU) or vLLM (GPU), `repeats` for several samples per
question, seeding, per-sample logs. posttrain adds its own pieces where lm-eval's are weaker or
absent (see README "Benchmark suites"): rows from a suite YAML with local-file overrides, the
template's generation prefix put back before scoring so `reward/` strips whole `<think>`
blocks, scoring by `reward/`'s verifiers (math-verify, IFEval, sandboxed code), seeds x samples
statistics, and the previous stage scored the same way beside each model.

Standard error: every question's score is the mean over its seeds x samples completions; the
task score is the mean over questions and its standard error is the standard deviation of the
per-question means over sqrt(#questions) (the clustered SE of Miller, "Adding Error Bars to
Evals", 2024), which counts both question sampling and sampling noise. Seed means are listed too.

>>> s = task_stats({0: [1.0, 0.0], 1: [1.0, 1.0], 2: [0.0, 0.0]}, [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
>>> round(s["score"], 3), round(s["stderr"], 3), s["n"], s["seed_scores"]
(0.5, 0.289, 3, [0.667, 0.333])
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.suites import SCORERS, Suite, SuiteError, TaskSpec, answer_part, build_docs, load_rows, load_suite

log = logging.getLogger("posttrain")


@dataclass
class Target:
    """A model to score: a dir, or (for a base model that exists only as a recipe name) a builder."""
    label: str
    model_dir: Path | None
    template: str
    key: str
    base: dict | None = None   # recipe model block when the model is the recipe's base


# ---- statistics ---------------------------------------------------------------------------------
def task_stats(per_doc: dict[int, list[float]], seed_docs: list[list[float]]) -> dict:
    """per_doc: question -> all its completion scores (seeds x samples); seed_docs: per seed, question means."""
    means = [sum(v) / len(v) for v in per_doc.values() if v]
    n = len(means)
    # None, not NaN, where undefined (no question / one question): NaN is not JSON (RFC 8259)
    score = sum(means) / n if n else None
    se = math.sqrt(sum((m - score) ** 2 for m in means) / (n - 1) / n) if n > 1 else None
    seeds = [round(sum(d) / len(d), 3) for d in seed_docs if d]
    return {"score": score, "stderr": se, "n": n, "completions": sum(len(v) for v in per_doc.values()),
            "seed_scores": seeds}


def score_pm(r: dict) -> str:
    """'0.500 ± 0.289'; '-' for an undefined score or SE (no question, or one).

    >>> score_pm({"score": 0.5, "stderr": None}), score_pm({"score": None, "stderr": None})
    ('0.500 ± -', '- ± -')
    """
    f = lambda x: "-" if x is None else f"{x:.3f}"
    return f"{f(r['score'])} ± {f(r['stderr'])}"


# ---- judge endpoint ------------------------------------------------------------------------------
def check_judge(judge: dict, where: str) -> None:
    """Refuse a configured but unusable judge before any model loads: one line naming the field.

    `judge` is the suite's `judge:` block merged with --judge-url/--judge-model (recipe:
    benchmarks[].judge_url/judge_model); its keys are reward.judge.JudgeConfig's.
    """
    from urllib.parse import urlparse
    from reward.judge import JudgeConfig, JudgeError, probe
    known = JudgeConfig.__dataclass_fields__
    bad = sorted(set(judge) - set(known))
    if bad:
        raise SuiteError(f"{where}: judge.{bad[0]}: unknown field (known: {', '.join(sorted(known))})")
    url = judge.get("base_url")
    parts = urlparse(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise SuiteError(f"{where}: judge.base_url (--judge-url) {url!r} is not an http(s) URL "
                         f"of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    if not isinstance(judge.get("model"), str) or not judge["model"].strip():
        raise SuiteError(f"{where}: judge.model (--judge-model) is needed with judge.base_url {url}: "
                         f"the model name that server serves")
    try:
        probe(**judge)
    except JudgeError as e:
        why = str(e)
        if why.startswith("gave up"):
            why = "unreachable (" + why.split(": ", 1)[-1] + ")"
        elif why.startswith("malformed"):
            why = f"not an OpenAI-compatible /chat/completions reply ({why})"
        else:  # HTTP 4xx: a wrong path (no /v1?) or a model the server does not serve
            why = f"refused a 1-token request for judge.model {judge['model']!r}: {why}"
        raise SuiteError(f"{where}: judge.base_url {url}: {why}") from None


# ---- lm-eval glue ---------------------------------------------------------------------------------
def sampling(model_dir: Path | None, spec: TaskSpec, suite: Suite) -> dict:
    """lm-eval generation_kwargs: the model's generation_config.json, then the task's overrides."""
    gen = {}
    if model_dir is not None and (model_dir / "generation_config.json").is_file():
        gen = json.loads((model_dir / "generation_config.json").read_text())
    temp = spec.temperature if spec.temperature is not None else gen.get("temperature", 0.0)
    out: dict[str, Any] = {"until": [], "max_gen_toks": spec.max_new_tokens or suite.max_new_tokens}
    if temp and temp > 0:
        out.update(do_sample=True, temperature=float(temp))
        top_p = spec.top_p if spec.top_p is not None else gen.get("top_p")
        if top_p is not None:
            out["top_p"] = float(top_p)
        if gen.get("top_k"):
            out["top_k"] = int(gen["top_k"])
    else:
        out.update(do_sample=False, temperature=0.0)
    return out


def task_config(name: str, spec: TaskSpec, docs: list[dict], gen: dict, prefix: str, judge: dict) -> dict:
    """One lm-eval task as a config dict: our docs, our prompt, our scorer, k repeats kept (not take_first)."""
    from datasets import Dataset, DatasetDict
    scorer = SCORERS[spec.scorer]

    def process_results(doc: dict, results: list[str]) -> dict:
        # After take_first_k, lm-eval hands the k completions of this question as one list.
        flat = [r for x in results for r in (x if isinstance(x, list) else [x])]
        comps = [prefix + r for r in flat]
        scores = scorer(comps, json.loads(doc["ref"]), judge=judge)
        answered = [bool(answer_part(c)) for c in comps]
        return {"score": scores, "answered": sum(answered) / len(answered)}

    return {
        "task": f"posttrain_{name}",
        "custom_dataset": lambda **_: DatasetDict({"test": Dataset.from_list(docs)}),
        "test_split": "test",
        "doc_to_text": "prompt",
        "doc_to_target": "ref",
        "output_type": "generate_until",
        "generation_kwargs": dict(gen),
        "repeats": spec.samples,
        "filter_list": [{"name": "all", "filter": [{"function": "take_first_k", "k": spec.samples}]}],
        "process_results": process_results,
        # `score` is kept per completion (a list) so that seeds x samples statistics are exact;
        # lm-eval's own aggregate is the per-question mean of it.
        "metric_list": [{"metric": "score", "aggregation": lambda xs: _mean([_mean(x) for x in xs]),
                         "higher_is_better": True},
                        {"metric": "answered", "aggregation": "mean", "higher_is_better": True}],
    }


def _mean(xs) -> float:
    xs = list(xs) if isinstance(xs, (list, tuple)) else [xs]
    return sum(xs) / len(xs) if xs else float("nan")


def _task_manager():
    # Our tasks are config dicts: skip indexing lm-eval's ~13K built-in task YAMLs (~40 s on a CPU).
    from lm_eval.tasks import TaskManager
    return TaskManager(include_defaults=False)


def make_lm(target: Target, backend: str, seed: int, batch_size: int, dtype: str, vllm_args: dict | None = None):
    """An lm-eval LM over the target: HFLM around an in-memory model (CPU/GPU), or lm-eval's vLLM."""
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM
        from posttrain.vllm_plugin import register
        register()  # the GDN conv loader fix, in this process too (entry point covers workers)
        import os
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: seeds as above
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        return VLLM(pretrained=str(target.model_dir), seed=seed, dtype=dtype, batch_size="auto",
                    **(vllm_args or {}))
    from lm_eval.models.huggingface import HFLM
    model, tok = load_target(target, dtype)
    return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=_max_len(model))


def close_lm(lm, backend: str) -> None:
    """Give the engine's GPU memory back before another target's engine asks for its share
    (vLLM checks free memory against gpu_memory_utilization at start)."""
    import gc
    import torch
    if backend == "vllm" and getattr(lm, "model", None) is not None:
        try:  # the scores are in hand: a failed cleanup costs the next engine memory, not the results
            engine = getattr(lm.model, "llm_engine", None)
            if engine is not None and hasattr(engine, "engine_core"):
                engine.engine_core.shutdown()
            lm.model = None
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            cleanup_dist_env_and_memory()
        except Exception as e:  # noqa: BLE001
            log.warning("vLLM engine cleanup: %s", e)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _max_len(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 4096) or 4096)


def load_target(target: Target, dtype: str):
    from posttrain.model.load import load_model, load_tokenizer
    if target.base is not None:
        m = target.base
        tok = load_tokenizer(m.get("tokenizer") or m.get("name", "tiny"), target.template)
        model = load_model(m.get("name", "tiny"), dtype, tokenizer=tok, seed=m.get("seed", 0))
    else:
        tok = load_tokenizer(str(target.model_dir), target.template)
        model = load_model(target.model_dir, dtype, tokenizer=tok)
    tok.padding_side = "left"  # GDN layers are exact only with left padding
    return model.eval(), tok


def evaluate_suite(target: Target, suite: Suite, backend: str = "hf", data_dir: str | Path | None = None,
                   judge: dict | None = None, batch_size: int = 32, dtype: str = "float32",
                   vllm_args: dict | None = None, lm=None) -> dict:
    """Score one model on every task of the suite, seeds x samples; returns the result record."""
    from lm_eval import simple_evaluate
    from posttrain.data.templates import generation_prefix
    judge = {**suite.judge, **(judge or {})}
    if judge.get("base_url") and any(t.needs_judge for t in suite.tasks.values()):
        check_judge(judge, suite.source)
    prefix = generation_prefix(target.template)
    docs, sources, configs = {}, {}, []
    for name, spec in suite.tasks.items():
        if spec.needs_judge and not judge.get("base_url"):
            log.info("%s: skipped (needs a judge endpoint: --judge-url)", name)
            continue
        rows, src = load_rows(name, spec, data_dir)
        docs[name], sources[name] = build_docs(name, spec, rows, src), src
        configs.append(task_config(name, spec, docs[name], sampling(target.model_dir, spec, suite), prefix, judge))
    if not configs:
        raise SuiteError(f"{suite.source}: no task to run")
    per_doc = {n: {d["doc_id"]: [] for d in docs[n]} for n in docs}
    seed_docs: dict[str, list[list[float]]] = {n: [] for n in docs}
    answered: dict[str, list[float]] = {n: [] for n in docs}
    examples: dict[str, list[dict]] = {n: [] for n in docs}
    t0 = time.time()
    own_lm = lm is None
    for seed in suite.seeds:
        # One engine for every seed. vLLM's engine runs in this process (make_lm), where it samples
        # unseeded requests from torch's generator, which simple_evaluate reseeds with each seed. An
        # engine per seed cost a start and a compile each (~2.5 min for a 1B) and the first one's
        # memory was not given back before the second asked for its share (H200, 2026-12-01).
        if lm is None:
            lm = make_lm(target, backend, seed, batch_size, dtype, vllm_args)
        res = simple_evaluate(model=lm, tasks=configs, apply_chat_template=True, log_samples=True,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              bootstrap_iters=0, task_manager=_task_manager())
        for n in docs:
            samples = res["samples"][f"posttrain_{n}"]
            means = []
            for s in samples:
                sc = s["score"] if isinstance(s["score"], list) else [s["score"]]
                per_doc[n][s["doc_id"]].extend(sc)
                means.append(_mean(sc))
                answered[n].append(s["answered"])
                if seed == suite.seeds[0] and len(examples[n]) < 3:
                    resp = s["filtered_resps"][0] if s.get("filtered_resps") else ""
                    resp = resp[0] if isinstance(resp, list) and resp else resp
                    examples[n].append({"prompt": s["doc"]["prompt"][:2000], "completion": prefix + str(resp)[:4000],
                                        "score": _mean(sc)})
            seed_docs[n].append(means)
    if own_lm:
        close_lm(lm, backend)
    tasks = {}
    for n in docs:
        st = task_stats(per_doc[n], seed_docs[n])
        st.update(samples=suite.tasks[n].samples, source=sources[n], scorer=suite.tasks[n].scorer,
                  answered=_mean(answered[n]), examples=examples[n])
        if st["score"] == 0 and st["answered"] == 0:
            st["warning"] = ("no completion reached an answer (think block never closed, or empty): "
                             "check the chat template and max_new_tokens")
            log.warning("%s / %s: %s", target.label, n, st["warning"])
        tasks[n] = st
    return {"model": target.label, "model_dir": str(target.model_dir) if target.model_dir else None,
            "key": target.key, "suite": suite.name, "suite_hash": suite.hash(), "backend": backend,
            "seeds": suite.seeds, "seconds": round(time.time() - t0, 1), "tasks": tasks}


# ---- what to score ------------------------------------------------------------------------------
def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _template_of(model_dir: Path) -> str:
    from posttrain.rundir import saved_template
    return saved_template(model_dir)


def stage_target(run_dir: Path, stage: str, template: str | None = None) -> Target:
    d = run_dir / stage
    done = _read_json(d / "DONE")
    if not done:
        raise SuiteError(f"stage {stage} of {run_dir} has no finished output (no DONE)")
    return Target(stage, d / "model", template or _template_of(d / "model"), f"stage:{done.get('key')}")


def previous_target(run_dir: Path, stage: str, template: str) -> Target | None:
    """The model `stage` started from, scored with the same template: its init_from stage, or the base."""
    from posttrain.rundir import read_yaml
    recipe = read_yaml(run_dir / "recipe.yaml")
    st = (recipe.get("stages") or {}).get(stage) or {}
    prev = st.get("init_from")
    if prev:
        return stage_target(run_dir, prev, template) if (run_dir / prev / "DONE").is_file() else None
    m = dict(recipe.get("model") or {})
    if not m.get("name"):
        return None
    m.setdefault("seed", recipe.get("seed", 0))
    name = str(m["name"])
    if Path(name).is_dir():
        return Target("base", Path(name), template, f"base:{name}")
    return Target("base", None, template, f"base:{name}:{m['seed']}", base=m)


def resolve_targets(path: str | Path, stage: str | None = None,
                    baseline: bool = True) -> tuple[Path, list[tuple[Target, Target | None]]]:
    """(dir the results go under, [(model, the model before it)]) for an export, a run, or a model dir."""
    p = Path(path)
    if not p.is_dir():
        raise SuiteError(f"{p}: not a directory (give an export, a run dir or a model dir)")
    pairs: list[tuple[Target, Target | None]] = []
    if (p / "export.json").is_file():
        info = _read_json(p / "export.json")
        t = Target(f"export:{p.name}", p, _template_of(p), f"export:{info.get('stage_key')}:{info.get('kind')}")
        run = Path(info.get("run") or "")
        prev = previous_target(run, info["stage"], t.template) if baseline and run.is_dir() else None
        return (run / "evals" if run.is_dir() else p / "evals"), [(t, prev)]
    if (p / "recipe.yaml").is_file() or any(p.glob("*/DONE")):
        exports = sorted(e for e in (p / "exports").glob("*") if (e / "export.json").is_file()) if not stage else []
        if exports:
            for e in exports:
                pairs += resolve_targets(e, baseline=baseline)[1]
        else:
            from posttrain.rundir import RunDir
            names = [stage] if stage else [n for n in RunDir(p).stage_names() if (p / n / "DONE").is_file()]
            for n in names:
                t = stage_target(p, n)
                pairs.append((t, previous_target(p, n, t.template) if baseline else None))
        if not pairs:
            raise SuiteError(f"{p}: no finished stage or export to evaluate")
        return p / "evals", pairs
    if (p / "config.json").is_file():
        return p / "evals", [(Target(p.name, p, _template_of(p), f"dir:{p.resolve()}"), None)]
    raise SuiteError(f"{p}: not an export (export.json), a run (recipe.yaml, */DONE) or a model dir (config.json)")


def _safe(label: str) -> str:
    return label.replace(":", "-").replace("/", "-")


def run_eval(path: str | Path, suite_name: str, stage: str | None = None, backend: str = "hf",
             data_dir: str | Path | None = None, judge: dict | None = None, baseline: bool = True,
             force: bool = False, **kw) -> dict:
    """Score every target and the model before it; results in OUT/evals/SUITE/*.json and summary.json."""
    suite = load_suite(suite_name)
    out_root, pairs = resolve_targets(path, stage, baseline)
    out = out_root / suite.name
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    for t, prev in pairs:
        for x in [x for x in (prev, t) if x is not None]:
            f = out / f"{_safe(x.label)}.json"
            old = _read_json(f)
            if not force and old.get("key") == x.key and old.get("suite_hash") == suite.hash() \
                    and old.get("backend") == backend:
                done[x.label] = old  # same model, same suite: reuse (the base is shared by many)
                continue
            if x.label in done:
                continue
            log.info("%s: suite %s on %s (%s)", x.label, suite.name, x.model_dir or x.key, backend)
            res = evaluate_suite(x, suite, backend, data_dir, judge, **kw)
            tmp = f.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(res, indent=2, default=str))
            tmp.replace(f)
            done[x.label] = res
    summary = {"suite": suite.name, "suite_hash": suite.hash(), "backend": backend,
               "pairs": [[t.label, prev.label if prev else None] for t, prev in pairs],
               "results": {k: {n: {m: v[m] for m in ("score", "stderr", "n", "completions", "samples", "answered")}
                               for n, v in r["tasks"].items()} for k, r in done.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def format_summary(summary: dict) -> str:
    """One row per task, model vs the model before it: score +- stderr."""
    rows = []
    for label, prev in summary["pairs"]:
        cur, base = summary["results"].get(label, {}), summary["results"].get(prev, {}) if prev else {}
        for task, r in cur.items():
            b = base.get(task)
            rows.append([label, task, score_pm(r), f"{score_pm(b)} ({prev})" if b else "", r["n"],
                         f"{r['completions']}", f"{r['answered']:.2f}"])
    head = ["model", "task", "score ± SE", "before", "questions", "completions", "answered"]
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(x).ljust(n) for x, n in zip(r, w)).rstrip()
    return "\n".join([line(head), line(["-" * n for n in w])] + [line(r) for r in rows])


def suite_html(run_dir: Path) -> str:
    """The report's "Benchmark suites" section: each model beside the one before it, score ± SE."""
    import html
    parts = []
    for f in sorted(Path(run_dir).glob("evals/*/summary.json")):
        s = _read_json(f)
        rows = []
        for label, prev in s.get("pairs") or []:
            cur, base = s["results"].get(label, {}), (s["results"].get(prev, {}) if prev else {})
            for task, r in cur.items():
                b = base.get(task)
                rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                    label, task, score_pm(r), score_pm(b) if b else "", prev or "", r["n"], r["completions"],
                    f"{r['answered']:.2f}")) + "</tr>")
        head = "".join(f"<th>{h}</th>" for h in ("model", "task", "score ± SE", "before", "before is", "questions",
                                                 "completions", "answered"))
        parts.append(f"<h3>Suite {html.escape(str(s.get('suite')))} ({html.escape(str(s.get('backend')))})</h3>"
                     f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    if not parts:
        return ""
    return ("<h2>Benchmark suites</h2>" + "".join(parts) + '<p class="sub">Mean over questions of each question\'s '
            "mean over seeds x samples; SE over questions (posttrain/harness.py). <code>posttrain eval RUN "
            "--suite NAME</code></p>")
