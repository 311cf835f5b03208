"""Reward health: what each reward did with the rows it was given, and the guards built on it.

`reward.registry.route` counts, per reward and call, the rows (verifier units) it scored,
returned None for and crashed on, and the sum of its scores, in `reward.metrics`. Here those
counters become log entries (`health/<name>/{scored,none,crashed,mean}` per logging
step), a crash-rate guard, and a coverage check/report: which reward takes each verifier
label of a prompt mix, and whether some rows go to no reward that can score them (they would
train on format rewards alone, or on nothing).

>>> logs = health_logs({"math/scored": 3, "math/score_sum": 2.0, "math/none": 1, "code/crashed": 2})
>>> logs["health/math/mean"], logs["health/code/crashed"]
(0.6667, 2)
>>> check_crashes(logs, 0.5)
Traceback (most recent call last):
...
reward.health.RewardHealthError: reward 'code' crashed on 2 of 2 rows this logging step (limit 50%, reward_crash_limit); last error: unknown
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from reward import metrics

# Rewards that judge shape: they never count as scoring a row's content. (coin_flip, the random
# reward of throughput runs on random models, counts: it is all those runs want.)
FORMAT_REWARDS = {"format_think", "format_instruct", "format_length"}
# Columns some content reward reads an answer from when a row has no verifier label.
ANSWER_COLUMNS = ("ground_truth", "tests", "instruction_id_list", "constraints", "reference")
_KINDS = ("scored", "none", "crashed")


# The last exception each reward raised (set by reward.registry.route), quoted when a guard trips.
last_error: dict[str, str] = {}


class RewardHealthError(RuntimeError):
    """A reward setup or a reward run that cannot train anything; one line saying why."""


def health_logs(counts: dict[str, float]) -> dict[str, float]:
    """reward.metrics counters -> {"health/NAME/scored|none|crashed|mean": ...} per reward."""
    names = sorted({k.rsplit("/", 1)[0] for k in counts if k.rsplit("/", 1)[-1] in (*_KINDS, "score_sum")})
    out: dict[str, float] = {}
    for name in names:
        for kind in _KINDS:
            out[f"health/{name}/{kind}"] = int(counts.get(f"{name}/{kind}", 0))
        scored = counts.get(f"{name}/scored", 0)
        if scored:
            out[f"health/{name}/mean"] = round(counts.get(f"{name}/score_sum", 0.0) / scored, 4)
    return out


def take_health_logs() -> dict[str, float]:
    """Health entries since the last call, and every other reward counter (parse failures...) too."""
    counts = metrics.snapshot(reset_after=True)
    rest = {f"health/counts/{k}": v for k, v in counts.items()
            if k.rsplit("/", 1)[-1] not in (*_KINDS, "score_sum")}
    return {**health_logs(counts), **rest}


def check_crashes(logs: dict[str, float], limit: float) -> None:
    """Raise when a reward crashed on more than `limit` (a fraction) of its rows in these logs."""
    for key, crashed in logs.items():
        if not key.startswith("health/") or not key.endswith("/crashed") or not crashed:
            continue
        name = key[len("health/"):-len("/crashed")]
        total = crashed + logs.get(f"health/{name}/scored", 0) + logs.get(f"health/{name}/none", 0)
        if crashed > limit * total:
            raise RewardHealthError(
                f"reward {name!r} crashed on {int(crashed)} of {int(total)} rows this logging step "
                f"(limit {limit:.0%}, reward_crash_limit); last error: {last_error.get(name, 'unknown')}")


def _labels(row: dict[str, Any]) -> list[str | None]:
    v = row.get("verifier", row.get("dataset"))
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v] or [None]
    return [None if v is None else str(v)]


def label_report(rows: Iterable[dict[str, Any]], specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per verifier label: rows carrying it and the rewards (by log name) of `specs` that score it.

    Only content rewards are listed. A row without a label lists the content rewards it would
    reach if it has an answer column (the judge needs none), else none.

    >>> label_report([{"verifier": ["math"]}, {"verifier": ["code_stdio"]}, {"verifier": "math"}],
    ...              [{"name": "math"}, {"name": "format_think"}])
    [{'label': 'code_stdio', 'rows': 1, 'rewards': []}, {'label': 'math', 'rows': 2, 'rewards': ['math']}]
    """
    from reward.registry import parse_spec

    content = []
    for spec in specs:
        name, alias, routes, _, _ = parse_spec(spec)
        if name not in FORMAT_REWARDS:
            content.append((alias, name, routes))
    counts: Counter = Counter()
    answerless: Counter = Counter()
    for row in rows:
        for lab in _labels(row):
            counts[lab] += 1
            if lab is None and not any(row.get(c) not in (None, "", []) for c in ANSWER_COLUMNS):
                answerless[lab] += 1
    report = []
    for lab, n in sorted(counts.items(), key=lambda kv: (kv[0] is None, str(kv[0]))):
        if lab is None:
            takers = [a for a, name, _ in content if name in ("judge", "coin_flip") or answerless[None] < n]
        else:
            takers = [a for a, _, routes in content if routes is None or lab.lower() in routes]
        report.append({"label": lab if lab is not None else "(none)", "rows": n, "rewards": takers})
    return report


def check_coverage(report: list[dict[str, Any]], where: str) -> None:
    """One clear line when some rows' labels go to no content reward."""
    orphans = [r for r in report if not r["rewards"]]
    if orphans:
        lost = ", ".join(f"{r['label']} ({r['rows']:,} rows)" for r in orphans)
        raise RewardHealthError(
            f"{where}: no reward in `rewards` can score verifier label(s) {lost}; add a reward that takes "
            f"them (e.g. {{name: code, verifier: [code, code_stdio]}}) or drop them from the mix")


def format_report(report: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows for a printed table: label, rows, rewards."""
    return [[r["label"], r["rows"], ", ".join(r["rewards"]) or "NONE (rows give no signal)"] for r in report]
