"""Benchmark suites (`suites/*.yaml`): which benchmarks, where their rows come from, how they are scored.

A suite is editable YAML, like a data mix. Each task names a benchmark dataset by hub id (or
a posttrain data mix), a `format` that turns one of its rows into a user prompt plus the columns
its scorer needs, a `scorer` (posttrain's verifiers in `reward/`), and how many samples per
question (`samples: 8` gives avg@8). `seeds` repeat the whole suite. Offline clusters put a
file per task in a data dir (`--data-dir DIR`, or `$POSTTRAIN_EVAL_DATA`): `DIR/<task>.jsonl`
(or .json / .parquet) replaces the hub dataset row for row, in the dataset's own columns.

>>> s = load_suite("think")
>>> sorted(s.tasks)[:3], s.tasks["aime24"].samples > 1
(['aime24', 'aime25', 'gpqa_diamond'], True)
>>> PROMPTS["gpqa"]({"Question": "2+2?", "Correct Answer": "4", "Incorrect Answer 1": "3",
...                  "Incorrect Answer 2": "5", "Incorrect Answer 3": "22"}, TaskSpec())[1]["answer"] in "ABCD"
True
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = ROOT / "suites"
DATA_EXTS = (".jsonl", ".json", ".parquet")


class SuiteError(ValueError):
    """One line naming the suite file and the field (or data row) that is wrong."""


@dataclass
class TaskSpec:
    format: str = "math"
    """How a row becomes a prompt and scorer columns: math | gsm8k | gpqa | ifeval | humaneval | mbpp | chat | messages."""
    dataset: str | None = None
    """Hub id (e.g. HuggingFaceH4/MATH-500); or None with `mix`."""
    config: str | list[str] | None = None
    """Dataset config name; a list concatenates configs (AIME 2025 comes as two halves)."""
    split: str = "test"
    mix: str | None = None
    """A posttrain data mix (rows with messages + ground_truth) instead of a hub dataset."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column renames for the format (e.g. {problem: question}) when a mirror names them differently."""
    instruction: str | None = None
    """Text after the question (default per format, e.g. the \\boxed{} instruction for math)."""
    scorer: str | None = None
    """math | ifeval | code | multiple_choice | judge (default: the format's)."""
    samples: int = 1
    """Completions per question; the score is their mean (avg@k) and all of them count for the error bar."""
    max_examples: int | None = None
    """First N rows only (smoke runs); None = all."""
    max_new_tokens: int | None = None
    """Generation budget; None = the suite's."""
    temperature: float | None = None
    """Overrides the export's generation_config (0 = greedy)."""
    top_p: float | None = None
    needs_judge: bool = False
    """Skipped unless a judge endpoint is configured (--judge-url / suite judge:)."""


@dataclass
class Suite:
    name: str
    source: str
    tasks: dict[str, TaskSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    max_new_tokens: int = 2048
    judge: dict[str, Any] = field(default_factory=dict)

    def hash(self) -> str:
        body = json.dumps({"tasks": {k: vars(v) for k, v in self.tasks.items()}, "seeds": self.seeds,
                           "max_new_tokens": self.max_new_tokens}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:12]


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    q = SUITES_DIR / f"{name_or_path}.yaml"
    if q.is_file():
        return q
    known = sorted(x.stem for x in SUITES_DIR.glob("*.yaml"))
    raise SuiteError(f"suite {name_or_path!r}: no such file and not a built-in suite ({', '.join(known)})")


def load_suite(name_or_path: str) -> Suite:
    """Read and check a suite file; every mistake is one line naming the file and field."""
    from omegaconf import OmegaConf
    p = suite_path(name_or_path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(p), resolve=True) or {}
    except Exception as e:
        raise SuiteError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    known = {"name", "description", "seeds", "max_new_tokens", "judge", "tasks"}
    bad = sorted(set(raw) - known)
    if bad:
        raise SuiteError(f"{p}: unknown field {bad[0]!r} (known: {', '.join(sorted(known))})")
    if not isinstance(raw.get("tasks"), dict) or not raw["tasks"]:
        raise SuiteError(f"{p}: tasks: needs a mapping of task name -> settings")
    tnames = {f.name for f in fields(TaskSpec)}
    tasks = {}
    for name, t in raw["tasks"].items():
        where = f"{p}: tasks.{name}"
        if not isinstance(t, dict):
            raise SuiteError(f"{where}: expected a mapping")
        bad = sorted(set(t) - tnames)
        if bad:
            raise SuiteError(f"{where}.{bad[0]}: unknown field (known: {', '.join(sorted(tnames))})")
        spec = TaskSpec(**t)
        if spec.format not in PROMPTS:
            raise SuiteError(f"{where}.format: {spec.format!r} is not one of {', '.join(PROMPTS)}")
        spec.scorer = spec.scorer or DEFAULT_SCORER[spec.format]
        if spec.scorer not in SCORERS:
            raise SuiteError(f"{where}.scorer: {spec.scorer!r} is not one of {', '.join(SCORERS)}")
        spec.needs_judge = spec.needs_judge or spec.scorer == "judge"  # skipped, not crashed, without a judge
        if bool(spec.dataset) == bool(spec.mix):
            raise SuiteError(f"{where}: give exactly one of dataset (hub id) or mix (data mix file)")
        if not isinstance(spec.samples, int) or spec.samples < 1:
            raise SuiteError(f"{where}.samples: must be an integer >= 1, got {spec.samples!r}")
        tasks[name] = spec
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SuiteError(f"{p}: seeds: must be a non-empty list of integers, got {seeds!r}")
    return Suite(name=raw.get("name") or p.stem, source=str(p), tasks=tasks, seeds=seeds,
                 max_new_tokens=int(raw.get("max_new_tokens", 2048)), judge=raw.get("judge") or {})


# ---- rows ---------------------------------------------------------------------------------------
def local_file(task: str, data_dir: str | Path | None) -> Path | None:
    d = data_dir or os.environ.get("POSTTRAIN_EVAL_DATA")
    if not d:
        return None
    for ext in DATA_EXTS:
        if (Path(d) / f"{task}{ext}").is_file():
            return Path(d) / f"{task}{ext}"
    return None


def load_rows(name: str, spec: TaskSpec, data_dir: str | Path | None = None) -> tuple[list[dict], str]:
    """The benchmark's rows (in its own columns) and where they came from."""
    local = local_file(name, data_dir)
    if local is not None:
        from posttrain.data.mix import _read_local
        rows = _read_local(local, spec.split)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise SuiteError(f"{local}: row {bad + 1}: {getattr(rows[bad], 'why', 'not a JSON object')}")
        src = str(local)
    elif spec.mix:
        from posttrain.data.mix import resolve_mix
        mix = Path(spec.mix) if Path(spec.mix).is_file() else ROOT / spec.mix
        rows, src = resolve_mix(mix).rows, str(spec.mix)
    else:
        from datasets import concatenate_datasets, load_dataset
        configs = spec.config if isinstance(spec.config, list) else [spec.config]
        try:
            ds = concatenate_datasets([load_dataset(spec.dataset, c, split=spec.split) for c in configs])
        except Exception as e:
            raise SuiteError(f"task {name}: cannot load {spec.dataset} ({type(e).__name__}: {str(e)[:200]}); "
                             f"offline, put {name}.jsonl in --data-dir / $POSTTRAIN_EVAL_DATA") from None
        rows, src = ds.to_list(), f"{spec.dataset}:{','.join(str(c) for c in configs if c)}:{spec.split}"
    if spec.max_examples is not None:
        rows = rows[: spec.max_examples]
    if not rows:
        raise SuiteError(f"task {name}: {src} has no rows")
    return rows, src


def build_docs(name: str, spec: TaskSpec, rows: list[dict], src: str) -> list[dict]:
    """Rows -> {prompt, ref (JSON of the scorer's columns)}; a row missing a column is a one-line error."""
    fn = PROMPTS[spec.format]
    out = []
    for i, row in enumerate(rows):
        try:
            prompt, ref = fn(_renamed(row, spec.columns), spec)
        except KeyError as e:
            raise SuiteError(f"{src}: row {i + 1}: task {name} (format {spec.format}) needs column {e.args[0]!r}; "
                             f"row has {', '.join(sorted(row))} (map names with columns:)") from None
        out.append({"doc_id": i, "prompt": prompt, "ref": json.dumps(ref, default=str)})
    return out


def _renamed(row: dict, columns: dict[str, str]) -> dict:
    return {**row, **{want: row[have] for want, have in columns.items() if have in row}}


# ---- prompt formats: row -> (user prompt, scorer columns) ---------------------------------------
# The \boxed{} instruction is the one DeepSeek-R1 / Qwen / open-instruct's math evals use.
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."
CODE = "Write a Python solution in one ```python code block."


def _instr(spec, default: str) -> str:
    return default if spec.instruction is None else spec.instruction


def _math(row, spec):
    return f"{row['problem']}\n\n{_instr(spec, BOXED)}".strip(), {"ground_truth": str(row["answer"])}


def _gsm8k(row, spec):
    # GSM8K's answer column is the worked solution ending in "#### <number>" (openai/gsm8k card).
    gold = str(row["answer"]).split("####")[-1].strip().replace(",", "")
    return f"{row['question']}\n\n{_instr(spec, BOXED)}".strip(), {"ground_truth": gold}


def _gpqa(row, spec):
    # Idavidrein/gpqa keeps the right answer in its own column; the order shown is a fixed shuffle
    # per question (seeded by its text) so that every model and run sees the same letters.
    opts = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    order = list(range(4))
    random.Random(hashlib.sha256(row["Question"].encode()).hexdigest()).shuffle(order)
    letters = "ABCD"
    body = "\n".join(f"({letters[j]}) {str(opts[k]).strip()}" for j, k in enumerate(order))
    default = "Answer with the letter of the correct option, as 'Answer: X' on the last line."
    return f"{row['Question'].strip()}\n\n{body}\n\n{_instr(spec, default)}", {"answer": letters[order.index(0)]}


def _ifeval(row, spec):
    return row["prompt"], {"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"]}


def _humaneval(row, spec):
    # HumanEval+ rows: prompt (signature + docstring), test (defines check(candidate)), entry_point.
    header = "\n".join(line for line in row["prompt"].splitlines() if line.startswith(("import ", "from ")))
    prompt = f"Complete this Python function.\n\n```python\n{row['prompt']}```\n\n{_instr(spec, CODE)}"
    return prompt, {"tests": [f"{row['test']}\ncheck({row['entry_point']})"], "header": header}


def _mbpp(row, spec):
    # MBPP+ rows: prompt (task text), test_list (the original asserts, naming the function), and
    # test (EvalPlus's stronger check script), test_imports.
    shown = "\n".join(row["test_list"][:1])
    imports = "\n".join(row.get("test_imports") or [])
    prompt = f"{row['prompt']}\nYour code should pass this test:\n{shown}\n\n{_instr(spec, CODE)}"
    return prompt, {"tests": [f"{imports}\n{row['test']}"], "header": imports}


def _chat(row, spec):
    turns = row["prompt"]
    first = turns[0] if isinstance(turns, list) else turns
    ref = row.get("reference")
    ref = ref[0] if isinstance(ref, list) and ref else ref
    return first, {"prompt": first, "reference": ref or None}


def _messages(row, spec):
    from posttrain.evaluate import prompts_and_truths
    prompts, truths = prompts_and_truths([row])
    return prompts[0][-1]["content"], {"ground_truth": truths[0]}


PROMPTS: dict[str, Callable] = {"math": _math, "gsm8k": _gsm8k, "gpqa": _gpqa, "ifeval": _ifeval,
                                "humaneval": _humaneval, "mbpp": _mbpp, "chat": _chat, "messages": _messages}
DEFAULT_SCORER = {"math": "math", "gsm8k": "math", "gpqa": "multiple_choice", "ifeval": "ifeval",
                  "humaneval": "code", "mbpp": "code", "chat": "judge", "messages": "math"}


# ---- scorers: (completions of one question, its columns) -> one score per completion ------------
# Completions arrive with the template's generation prefix put back (`<think>` for Think models),
# so reward/'s think stripping sees whole blocks: an unclosed <think> means no answer (score 0),
# where lm-eval's `think_end_token` split would score the reasoning text itself.
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def answer_part(text: str) -> str:
    """What follows the reasoning; '' when a <think> block never closed (the answer never started).

    >>> answer_part("<think>2+2</think> 4"), answer_part("<think>2+2 is 4"), answer_part("4")
    ('4', '', '4')
    """
    text = _THINK.sub("", text)
    return "" if "<think>" in text else text.split("</think>")[-1].strip()


def score_math(comps: list[str], ref: dict, **_) -> list[float]:
    from reward.math import math_reward
    return [s or 0.0 for s in math_reward(comps, ground_truth=[ref["ground_truth"]] * len(comps))]


def score_ifeval(comps: list[str], ref: dict, **_) -> list[float]:
    # IFEval's headline number: prompt-level strict accuracy (every instruction followed).
    from reward.ifeval import ifeval_reward
    n = len(comps)
    return [s or 0.0 for s in ifeval_reward(comps, instruction_id_list=[ref["instruction_id_list"]] * n,
                                             kwargs=[ref["kwargs"]] * n, mode="all")]


def score_code(comps: list[str], ref: dict, **_) -> list[float]:
    # pass@1 per completion: all tests must pass. The prompt's imports go first, as HumanEval's
    # signatures need them (`List[int]`) and chat models often drop them from their answer.
    # EvalPlus's test scripts open with `import numpy as np` (their float-tolerant `assertion`;
    # evalplus tools/{humaneval,mbpp}/to_original_fmt.py), so the sandbox must see the venv's
    # packages: the stdlib-only interpreter fails every HumanEval+/MBPP+ test with ImportError.
    from reward.code import code_reward, extract_code
    progs = []
    for c in comps:
        body = extract_code(answer_part(c))
        progs.append(f"```python\n{ref.get('header', '')}\n{body}\n```")
    return [s or 0.0 for s in code_reward(progs, tests=[ref["tests"]] * len(comps), mode="all", site_packages=True)]


_LETTER = re.compile(r"(?:answer\s*(?:is|:)\s*\(?|\\boxed\{\s*\(?)([ABCD])\b", re.IGNORECASE)


def extract_letter(text: str) -> str | None:
    """The last stated option letter: 'Answer: C', 'the answer is (B)', '\\boxed{D}'.

    >>> extract_letter("B looks tempting, but the answer is (C).")
    'C'
    >>> extract_letter("I am not sure.") is None
    True
    """
    found = _LETTER.findall(text)
    return found[-1].upper() if found else None


def score_multiple_choice(comps: list[str], ref: dict, **_) -> list[float]:
    return [float(extract_letter(answer_part(c)) == ref["answer"]) for c in comps]


def score_judge(comps: list[str], ref: dict, judge: dict | None = None, **_) -> list[float]:
    # An unreadable verdict scores 0 (open-instruct's rule); a request that failed after the
    # judge's retries stops the run: a score averaged over outages would look like a real one.
    from reward import metrics
    from reward.judge import judge_reward
    n = len(comps)
    failed = metrics.snapshot().get("judge/request_fail", 0)
    out = judge_reward(comps, prompts=[ref["prompt"]] * n, reference=[ref.get("reference")] * n, **(judge or {}))
    failed = metrics.snapshot().get("judge/request_fail", 0) - failed
    if failed:
        raise SuiteError(f"judge.base_url {(judge or {}).get('base_url')}: {failed:g} of {n} judge requests failed "
                         f"after retries (endpoint down or overloaded?)")
    return [s or 0.0 for s in out]


SCORERS: dict[str, Callable] = {"math": score_math, "ifeval": score_ifeval, "code": score_code,
                                "multiple_choice": score_multiple_choice, "judge": score_judge}
