"""Built-in demo data (`builtin:NAME` in a data mix): multi-step arithmetic word problems.

Why this task: a ~1M-parameter hybrid learns 2-digit addition to 92% in two minutes of SFT,
so the demo chains 2-3 steps (a 2-digit start, operands 2-29); each step is easy, the chain
compounds errors, and SFT gets partway, which leaves headroom that DPO and RL can visibly
close. (With operands up to 99 SFT reached only 5%: too little signal for RL's groups.)
Answers are integers, checkable by the math reward.

Every problem is a pure function of (seed, index); a problem lands in `test` iff a hash of its
text says so, so train and test never overlap whatever counts a mix asks for.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable

NAMES = ["Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]
ITEMS = ["apples", "coins", "books", "cards", "shells", "stamps", "pens", "marbles"]
ADD = ["gets {n}", "buys {n}", "finds {n}", "wins {n}"]
SUB = ["gives away {n}", "loses {n}", "sells {n}", "uses {n}"]
POOL = {"train": 20000, "test": 400}


def _problem(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(10, 99)
    start, steps, clauses = total, [], []
    for _ in range(rng.choice([2, 3])):
        n = rng.randint(2, 9)
        if total - n >= 0 and rng.random() < 0.5:
            clauses.append(rng.choice(SUB).format(n=n)); steps.append(f"{total}-{n}={total - n}"); total -= n
        else:
            clauses.append(rng.choice(ADD).format(n=n)); steps.append(f"{total}+{n}={total + n}"); total += n
    question = f"{name} has {start} {item}, {', then '.join(clauses)}. How many {item} now?"
    return {"question": question, "steps": steps, "answer": total}


def _in_test(question: str) -> bool:
    return hashlib.sha256(question.encode()).digest()[0] < 13  # ~5%


def problems(split: str, seed: int = 0) -> list[dict]:
    """The fixed pool of problems for a split, in a deterministic order."""
    if split not in POOL:
        raise ValueError(f"builtin split must be one of {sorted(POOL)}, got {split!r}")
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < POOL[split]:
        p = _problem(rng)
        if (_in_test(p["question"]) == (split == "test")) and p["question"] not in seen:
            seen.add(p["question"]); out.append(p)
    return out


def think_answer(p: dict) -> str:
    return "<think>" + ". ".join(p["steps"]) + ".</think>" + f"The answer is {p['answer']}."


def instruct_answer(p: dict) -> str:
    return ", ".join(p["steps"]) + f". The answer is {p['answer']}."


def _slip(p: dict, rng: random.Random) -> dict:
    """A plausible wrong solution: one step off by a small amount, carried through to the end."""
    k = rng.randrange(len(p["steps"]))
    delta = rng.choice([-10, -2, -1, 1, 2, 10])
    steps, carry = [], None
    for i, s in enumerate(p["steps"]):
        lhs, _ = s.split("=")
        op = "+" if "+" in lhs else "-"
        a, b = lhs.split(op)
        a = carry if carry is not None else int(a)
        r = a + int(b) if op == "+" else a - int(b)
        if i == k:
            r += delta
        steps.append(f"{a}{op}{b}={r}"); carry = r
    return {**p, "steps": steps, "answer": carry}


def _chat(answer_fn: Callable[[dict], str]) -> Callable[[str, int], list[dict]]:
    def rows(split: str, seed: int = 0) -> list[dict]:
        return [{"messages": [{"role": "user", "content": p["question"]},
                              {"role": "assistant", "content": answer_fn(p)}],
                 "ground_truth": str(p["answer"])} for p in problems(split, seed)]
    return rows


def _prefs(answer_fn: Callable[[dict], str]) -> Callable[[str, int], list[dict]]:
    def rows(split: str, seed: int = 0) -> list[dict]:
        rng = random.Random(seed + 1)
        return [{"prompt": [{"role": "user", "content": p["question"]}],
                 "chosen": [{"role": "assistant", "content": answer_fn(p)}],
                 "rejected": [{"role": "assistant", "content": answer_fn(_slip(p, rng))}],
                 "ground_truth": str(p["answer"])}
                for p in problems(split, seed)]
    return rows


def _prompts(split: str, seed: int = 0) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": p["question"]}], "ground_truth": str(p["answer"]),
             "verifier": "math"} for p in problems(split, seed)]


# Throughput data: random words at realistic lengths (log-normal, in characters, which the tiny
# tokenizer makes one token each). Nothing to learn; for benchmarks of the stages at scale.
SYNTHETIC_POOL = {"train": 2048, "test": 64}
WORDS = ["alpha", "beta", "delta", "state", "gate", "layer", "token", "model", "graph", "proof", "lemma",
         "value", "sum", "step", "the", "of", "and", "is", "we", "so", "then", "if", "let", "a", "x", "y"]


def _text(rng: random.Random, mean: float, sigma: float = 0.8, cap: int = 30000) -> str:
    n = min(cap, max(16, int(rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma))))
    words, size = [], 0
    while size < n:
        w = rng.choice(WORDS)
        words.append(w); size += len(w) + 1
    return " ".join(words)[:n]


def _thought(rng: random.Random, mean: float) -> str:
    # Think-shaped, as the Think templates expect: the generation prompt ends in <think>, so an answer
    # without it would not extend the prompt (TRL then drops the prompt's <think> from the sequence).
    return f"<think>{_text(rng, mean)}</think>{_text(rng, 40)}"


def _synthetic_chat(split: str, seed: int = 0) -> list[dict]:
    """SFT rows like long reasoning traces: prompt mean ~300 characters, answer mean ~3,000."""
    rng = random.Random(f"chat-{split}-{seed}")
    return [{"messages": [{"role": "user", "content": _text(rng, 300)},
                          {"role": "assistant", "content": _thought(rng, 3000)}]} for _ in range(SYNTHETIC_POOL[split])]


def _synthetic_prefs(split: str, seed: int = 0) -> list[dict]:
    """Preference pairs: prompt mean ~256 characters, chosen and rejected mean ~768 each."""
    rng = random.Random(f"prefs-{split}-{seed}")
    return [{"prompt": [{"role": "user", "content": _text(rng, 256)}],
             "chosen": [{"role": "assistant", "content": _thought(rng, 768)}],
             "rejected": [{"role": "assistant", "content": _thought(rng, 768)}]} for _ in range(SYNTHETIC_POOL[split])]


BUILTINS: dict[str, Callable[[str, int], list[dict]]] = {
    "arith_think": _chat(think_answer),
    "arith_instruct": _chat(instruct_answer),
    "arith_prefs_think": _prefs(think_answer),
    "arith_prefs_instruct": _prefs(instruct_answer),
    "arith_prompts": _prompts,
    "synthetic_chat": _synthetic_chat,
    "synthetic_prefs": _synthetic_prefs,
}


def load_builtin(name: str, split: str) -> list[dict]:
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin dataset {name!r} (known: {', '.join(sorted(BUILTINS))})")
    return BUILTINS[name](split)
