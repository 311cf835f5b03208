"""Code reward: run the completion's program against the row's tests in the sandbox.

Tests per row come from the `tests` column or, for open-instruct / Dolci rows (labels `code`
and `code_stdio`), from `ground_truth`, in every form open-instruct's `decode_tests` reads: a
list, a JSON string, or base64(zlib(pickle(list))) -- AI2 ships `code_stdio` cases that way.
Pickled tests are only ever unpickled inside the sandbox (a "decode" job, cached by hash), as
unpickling dataset bytes is running code. A test is an assert statement (run after the code,
in its namespace), an `{"input", "output"}` stdin/stdout case, or APPS-style
`{"inputs": [...], "outputs": [...]}`. Expected outputs never enter the sandbox that runs the
program, so the program cannot forge them; outputs are compared as open-instruct's
`grade_stdio` does (stripped lines, numbers compared as decimals).

Reward: the fraction of tests passed ("partial"), scored 0 below `pass_threshold` (AI2's Olmo 3
runs use 0.99), or 1.0 only if all pass ("all"). The program is the last fenced block of the
whole completion, think block included, else the whole completion (open-instruct's
`extract_python_code`); posttrain drops any language tag, where open-instruct drops only
`python` (it would run a `py` tag line as code and fail). `refuse_unsafe` scores 0 without running programs that mention what
open-instruct's `should_execute` refuses (os, threading, torch...).

>>> code_reward(["```python\\ndef add(a, b):\\n    return a + b\\n```"],
...             tests=[["assert add(1, 2) == 3", "assert add(2, 2) == 5"]])
[0.5]
>>> code_reward(["print(int(input()) + 1)"], tests=[[{"input": "41", "output": "42"}]])
[1.0]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
from decimal import Decimal, InvalidOperation
from typing import Any

from reward import metrics, sandbox
from reward._text import column, raw_text

_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
# open-instruct code_utils.should_execute: programs mentioning these are not run (score 0).
UNSAFE = ("threading", "multiprocess", "multiprocessing", "import os", "from os", "shutil", "import torch",
          "from torch", "import sklearn", "from sklearn")
_B64 = re.compile(r"[A-Za-z0-9+/=\s]+")


def extract_code(text: str) -> str:
    """Last fenced block (its body); the whole text if there is none.

    >>> extract_code("a\\n```python\\nx = 1\\n```\\nb\\n```python\\nx = 2\\n```")
    'x = 2\\n'
    """
    blocks = _FENCE.findall(text)
    return blocks[-1][1] if blocks else text


class Encoded(str):
    """A base64 + zlib + pickle test blob, to be decoded in the sandbox only."""


def decode_tests(tests: Any) -> Any:
    """open-instruct's decode_tests, minus the unpickling: a list, parsed JSON, or `Encoded`.

    >>> decode_tests('["assert f() == 1"]'), type(decode_tests("eJxrYJnKxgABsVO8GRP1ABkRAuw=")).__name__
    (['assert f() == 1'], 'Encoded')
    """
    if isinstance(tests, str) and tests:
        try:
            return json.loads(tests)
        except ValueError:
            pass
        if _B64.fullmatch(tests):
            try:
                base64.b64decode(tests, validate=False)
                return Encoded(tests)
            except (binascii.Error, ValueError):
                pass
    return tests


_decoded: dict[str, Any] = {}
_decoded_lock = threading.Lock()


def unpickle_in_sandbox(blobs: list[str], limits: sandbox.Limits, workers: int) -> list[Any]:
    """Decode pickled test blobs in sandboxes (cached by hash: a prompt's rollouts share them)."""
    keys = [hashlib.sha256(b.encode()).hexdigest() for b in blobs]
    with _decoded_lock:
        todo = {k: b for k, b in zip(keys, blobs) if k not in _decoded}
    if todo:
        results = sandbox.run_many([{"mode": "decode", "code": "", "blob": b} for b in todo.values()],
                                   limits, workers)
        with _decoded_lock:
            for k, res in zip(todo, results):
                ok = res.status == "ok" and res.payload and "tests" in res.payload
                if not ok:
                    metrics.incr("code/undecodable_tests")
                _decoded[k] = res.payload["tests"] if ok else None
                if len(_decoded) > 4096:
                    _decoded.pop(next(iter(_decoded)))
    with _decoded_lock:
        return [_decoded.get(k) for k in keys]


def _stdin(x: Any) -> str:
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)  # testing_util.call_method


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
        return {"mode": "stdio", "inputs": [_stdin(t["input"]) for t in tests],
                "outputs": [_stdin(t["output"]) for t in tests]}
    raise ValueError("tests must be assert strings or {input, output} cases")


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(x) for x in line.split()]
    except (InvalidOperation, ValueError):
        return None


def same_output(got: str | None, want: str) -> bool:
    """open-instruct's grade_stdio: same number of stripped lines, each equal as text or as decimals.

    >>> same_output("3.0 \\n", "3"), same_output("1 2", "1\\n2")
    (True, False)
    """
    if got is None:
        return False
    lines = lambda s: [x.strip() for x in s.strip().split("\n")]
    a, b = lines(got), lines(want)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x != y:
            dx, dy = _decimals(x), _decimals(y)
            if dx is None or dy is None or dx != dy:
                return False
    return True


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


def _row_spec(tests: Any, label: Any) -> dict[str, Any] | None:
    spec = normalize_tests(tests)
    if spec is not None and isinstance(label, str):
        want = {"code": "asserts", "code_stdio": "stdio"}.get(label.lower())
        if want and spec["mode"] != want:
            raise ValueError(f"{label} row carries {spec['mode']} tests")
    return spec


def code_reward(completions: list[Any], tests: list[Any] | None = None, ground_truth: list[Any] | None = None,
                verifier: list[Any] | None = None, mode: str = "partial", pass_threshold: float = 0.0,
                refuse_unsafe: bool = False, workers: int = 2, limits: sandbox.Limits | None = None,
                site_packages: bool = False, **_: Any) -> list[float | None]:
    """TRL reward: run every row's code concurrently (`workers` sandboxes) and score it.

    `pass_threshold`: pass rates below it score 0 (open-instruct's code_pass_rate_reward_threshold).
    `site_packages=True` lets solutions import installed packages (numpy...); the default
    stdlib-only interpreter starts ~3x faster, which is most of a sandbox run's cost.
    """
    n = len(completions)
    cols = {"tests": tests, "gt": ground_truth, "v": verifier}
    rows = [t if t is not None else g for t, g in zip(column(cols, "tests", n), column(cols, "gt", n))]
    labels = column(cols, "v", n)
    limits = limits or sandbox.Limits()
    rows = [decode_tests(t) for t in rows]
    enc = [i for i, t in enumerate(rows) if isinstance(t, Encoded)]
    if enc:
        for i, t in zip(enc, unpickle_in_sandbox([rows[i] for i in enc], limits, workers)):
            rows[i] = t
    scores: list[float | None] = [None] * n
    jobs, where, specs = [], [], []
    for i, (comp, t) in enumerate(zip(completions, rows)):
        try:
            spec = _row_spec(t, labels[i])
        except (ValueError, TypeError, KeyError):
            metrics.incr("code/bad_tests")
            continue
        if spec is None:
            continue
        text = raw_text(comp)
        if not text or not text.strip():
            metrics.incr("code/no_code")
            scores[i] = 0.0
            continue
        code = extract_code(text)
        if refuse_unsafe and any(u in code for u in UNSAFE):
            metrics.incr("code/refused")
            scores[i] = 0.0
            continue
        job = {"mode": spec["mode"], "code": code}
        job.update({"tests": spec["tests"]} if spec["mode"] == "asserts" else {"inputs": spec["inputs"]})
        jobs.append(job), where.append(i), specs.append(spec)
    results = sandbox.run_many(jobs, limits, workers, site_packages) if jobs else []
    for i, spec, res in zip(where, specs, results):
        frac = _fraction(spec, res)
        if mode == "all":
            scores[i] = float(frac == 1.0)
        else:
            scores[i] = 0.0 if frac < pass_threshold else frac
    return scores
