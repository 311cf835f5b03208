"""Code reward: run the completion's program against the row's `tests` in the sandbox.

`tests` per row: a list of assert statements (run after the code, in its namespace), a list
of `{"input", "output"}` stdin/stdout cases, an APPS-style `{"inputs": [...], "outputs": [...]}`,
or a JSON string of any of these. Expected outputs never enter the sandbox, so stdin/stdout
cases cannot be forged by the program. Reward: fraction of tests passed ("partial") or 1.0 only
if all pass ("all").

>>> code_reward(["```python\\ndef add(a, b):\\n    return a + b\\n```"],
...             tests=[["assert add(1, 2) == 3", "assert add(2, 2) == 5"]])
[0.5]
>>> code_reward(["print(int(input()) + 1)"], tests=[[{"input": "41", "output": "42"}]])
[1.0]
"""

from __future__ import annotations

import json
import re
from typing import Any

from reward import metrics, sandbox
from reward._text import answer_text, column

_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """Last ```python (or ```py / unlabelled) fenced block; the whole text if there is none.

    >>> extract_code("a\\n```python\\nx = 1\\n```\\nb\\n```python\\nx = 2\\n```")
    'x = 2\\n'
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    py = [b for lang, b in blocks if lang in ("python", "py", "python3", "")]
    return py[-1] if py else text


def normalize_tests(tests: Any) -> dict[str, Any] | None:
    """{"mode": "asserts", "tests": [...]} or {"mode": "stdio", "inputs", "outputs"}; None if empty."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError:
            tests = [tests]  # a bare block of assert statements
    if isinstance(tests, dict) and "inputs" in tests:
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if not tests:
        return None
    if all(isinstance(t, str) for t in tests):
        return {"mode": "asserts", "tests": list(tests)}
    if all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        return {"mode": "stdio", "inputs": [str(t["input"]) for t in tests],
                "outputs": [str(t["output"]) for t in tests]}
    raise ValueError("tests must be assert strings or {input, output} cases")


def same_output(got: str | None, want: str) -> bool:
    """Line-wise match ignoring trailing whitespace and trailing blank lines (judge convention)."""
    if got is None:
        return False
    norm = lambda s: "\n".join(line.rstrip() for line in s.strip().splitlines())
    return norm(got) == norm(want)


def _fraction(spec: dict, result: sandbox.RunResult) -> float:
    if result.status != "ok":
        metrics.incr(f"code/{result.status}")
    if result.payload is None:
        return 0.0
    if spec["mode"] == "asserts":
        passed = result.payload.get("passed") or []
    else:
        outs = result.payload.get("outputs") or []
        passed = [same_output(o, w) for o, w in zip(outs, spec["outputs"])]
    total = len(spec["tests"] if spec["mode"] == "asserts" else spec["outputs"])
    return sum(bool(p) for p in passed[:total]) / total


def code_reward(completions: list[Any], tests: list[Any] | None = None, mode: str = "partial",
                workers: int = 2, limits: sandbox.Limits | None = None, site_packages: bool = False,
                **_: Any) -> list[float | None]:
    """TRL reward: run every row's code concurrently (`workers` sandboxes) and score it.

    `site_packages=True` lets solutions import installed packages (numpy...); the default
    stdlib-only interpreter starts ~3x faster, which is most of a sandbox run's cost.
    """
    rows = column({"tests": tests}, "tests", len(completions))
    scores: list[float | None] = [None] * len(completions)
    jobs, where, specs = [], [], []
    for i, (comp, t) in enumerate(zip(completions, rows)):
        try:
            spec = normalize_tests(t)
        except (ValueError, TypeError, KeyError):
            metrics.incr("code/bad_tests")
            continue
        if spec is None:
            continue
        text = answer_text(comp)
        if not text or not text.strip():
            metrics.incr("code/no_code")
            scores[i] = 0.0
            continue
        job = {"mode": spec["mode"], "code": extract_code(text)}
        job.update({"tests": spec["tests"]} if spec["mode"] == "asserts" else {"inputs": spec["inputs"]})
        jobs.append(job), where.append(i), specs.append(spec)
    results = sandbox.run_many(jobs, limits or sandbox.Limits(), workers, site_packages) if jobs else []
    for i, spec, res in zip(where, specs, results):
        frac = _fraction(spec, res)
        scores[i] = frac if mode == "partial" else float(frac == 1.0)
    return scores
