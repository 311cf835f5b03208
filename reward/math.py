"""Math reward: is the completion's final answer equivalent to the `ground_truth` column?

Equivalence is math-verify's (fractions, LaTeX, intervals, sets, units), with a fast path for
plain integers because the tiny demo task (and GSM8K) only ever needs `int(a) == int(b)`
and sympy costs ~ms per call.

Strict mode takes only an explicit answer (`\\boxed{}`, "the answer is", "#### n") in the text
after the think block, so a policy cannot score by ending on a lucky number; lenient mode also
takes the last number. Mode "open_instruct" (the Dolci recipes') takes the candidates
open-instruct's `MathVerifier` takes, from the whole completion, think block included: the last
`\\boxed{}` and the Minerva "Final Answer: The final answer is X. I hope it is correct.", else
the last `$...$`, else the whole answer; any candidate equal to the gold scores 1. Equality is
math-verify's, which accepts every pair open-instruct's string normalisation accepts and more
(e.g. `0.5` vs `\\frac{1}{2}`). Strict mode (the default, the tiny demo's) differs from
open-instruct on purpose: it reads only the text after `</think>`, so an answer written only
inside the reasoning (or a completion cut off mid-thought) scores 0 there; use
`mode: open_instruct` to score rows as open-instruct does.

>>> math_reward(["<think>2+2</think> The answer is 4.", r"\\boxed{\\frac{1}{2}}", "no idea"],
...             ground_truth=["4", "0.5", "3"])
[1.0, 1.0, 0.0]
>>> math_reward(["I get 7"], ground_truth=["7"]), math_reward(["I get 7"], ground_truth=["7"], mode="lenient")
([0.0], [1.0])
>>> math_reward(["<think>so \\\\boxed{7}", "Final Answer: The final answer is $7$. I hope it is correct."],
...             ground_truth=["7", "7"], mode="open_instruct")
[1.0, 1.0]
"""

from __future__ import annotations

import re
import threading
from typing import Any

from reward import metrics
from reward._text import answer_text, column, raw_text

MAX_ANSWER_CHARS = 1_000  # longer "answers" are rambling, and sympy may hang on them

_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*[:=]?\s*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_INT = re.compile(r"[-+]?\d+")


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (or \fbox{...}), braces balanced.

    >>> last_boxed(r"\boxed{1} then \boxed{\frac{1}{2}}")
    '\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j].strip()
    return None  # unbalanced: broken LaTeX, no answer


def _clean_phrase(ans: str) -> str:
    # "the answer is $42$." -> "42": keep the first line, drop sentence punctuation and $.
    ans = ans.strip().splitlines()[0] if ans.strip() else ""
    ans = ans.strip().rstrip(".").strip()
    if ans.startswith("$") and ans.endswith("$") and len(ans) > 1:
        ans = ans.strip("$")
    return ans.strip()


def extract_answer(text: str, mode: str = "strict") -> str | None:
    """Final answer string of a (think-stripped) completion, or None.

    >>> extract_answer("so the answer is 12.")
    '12'
    >>> extract_answer("#### 1,234")
    '1,234'
    >>> extract_answer("it is 3 or 5", mode="lenient")
    '5'
    """
    boxed = last_boxed(text)
    if boxed:
        return boxed
    for pattern in (_ANSWER_IS, _HASHES):
        found = pattern.findall(text)
        if found and _clean_phrase(found[-1]):
            return _clean_phrase(found[-1])
    if mode == "lenient":
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1].rstrip(",")
    return None


_MINERVA = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")


def open_instruct_candidates(text: str) -> list[str]:
    """Answer candidates as open-instruct's MathVerifier extracts them (see module docstring)."""
    out = []
    boxed = last_boxed(text)
    if boxed:
        out.append(boxed)
    m = _MINERVA.search(text + "I hope it is correct.")
    if m and m.group(1).strip():
        out.append(m.group(1).strip().strip("$").strip())
    if not out:
        dollars = [m.start() for m in re.finditer(r"\$", text)]
        if len(dollars) > 1:
            out.append(text[dollars[-2] + 1: dollars[-1]].strip())
    if not out:
        out.append(text.strip())
    return [c for c in out if c]


def _as_int(s: str) -> int | None:
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    return int(s) if _INT.fullmatch(s) else None


def _gold_latex(gold: str) -> str:
    # math-verify reads a gold as LaTeX only inside $...$ or \boxed{}: bare "(1,2]" or
    # "\frac12" would otherwise be parsed as plain text/expressions and miss matches.
    if "$" in gold or "\\boxed" in gold:
        return gold
    return f"${gold}$"


def _verify(gold: str, answer: str, timeout_s: int) -> bool:
    from math_verify import parse, verify  # lazy: keeps `import reward` cheap

    # math-verify's timeouts use signal.alarm, which only works on the main thread (where TRL
    # calls rewards); elsewhere sympy runs unbounded, so MAX_ANSWER_CHARS is the only guard.
    timeout = timeout_s if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(_gold_latex(gold), parsing_timeout=timeout, raise_on_error=True)
    if not gold_parsed:
        metrics.incr("math/gold_parse_fail")
        return False
    pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout, raise_on_error=True)
    if not pred:
        metrics.incr("math/parse_fail")
        return False
    return bool(verify(gold_parsed, pred, timeout_seconds=timeout, raise_on_error=True))


def normalize_gold(gold: Any) -> list[str]:
    """Accepted gold answers: GSM8K "... #### 42" solutions reduce to "42"; lists mean any-of."""
    if gold is None:
        return []
    if isinstance(gold, (list, tuple)):
        return [g for item in gold for g in normalize_gold(item)]
    gold = str(gold).strip()
    if "####" in gold:
        gold = gold.rsplit("####", 1)[1].strip()
    return [gold] if gold else []


def score_one(completion: Any, gold: Any, mode: str = "strict", timeout_s: int = 2) -> float | None:
    """1.0 if the answer matches any gold, 0.0 if not, None if the row has no gold."""
    golds = normalize_gold(gold)
    if not golds:
        return None
    text = raw_text(completion) if mode == "open_instruct" else answer_text(completion)
    if text is None:
        metrics.incr("math/bad_completion")
        return 0.0
    answers = open_instruct_candidates(text) if mode == "open_instruct" else [extract_answer(text, mode)]
    answers = [a for a in answers if a is not None]
    if not answers:
        metrics.incr("math/no_answer")
        return 0.0
    if all(len(a) > MAX_ANSWER_CHARS for a in answers):
        metrics.incr("math/answer_too_long")
        return 0.0
    return float(any(_matches(a, golds, timeout_s) for a in answers if len(a) <= MAX_ANSWER_CHARS))


def _matches(answer: str, golds: list[str], timeout_s: int) -> bool:
    for g in golds:
        a, b = _as_int(answer), _as_int(g)
        if a is not None and b is not None:
            if a == b:
                return True
            continue  # both plain integers and different: no need for sympy
        try:
            if _verify(g, answer, timeout_s):
                return True
        except Exception:  # sympy/latex2sympy raise on broken LaTeX in many ways
            metrics.incr("math/verify_error")
        except BaseException as exc:  # math-verify's TimeoutException is a BaseException
            if type(exc).__name__ != "TimeoutException":
                raise
            metrics.incr("math/timeout")
    return False


def math_reward(completions: list[Any], ground_truth: list[Any] | None = None,
                mode: str = "strict", timeout_s: int = 2, **_: Any) -> list[float | None]:
    """TRL reward: `ground_truth` column vs. each completion's final answer.

    `timeout_s` bounds math-verify's parse and compare (each) when called on the main thread.
    """
    golds = column({"ground_truth": ground_truth}, "ground_truth", len(completions))
    return [score_one(c, g, mode, timeout_s) for c, g in zip(completions, golds)]
