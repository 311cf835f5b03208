"""Asynchronous RL: a rollout producer that generates ahead of the trainer, with bounded staleness.

The trainer (TRL's GRPOTrainer under DeepSpeed, `stages/rl.py`) stays the consumer: at the start
of optimizer step t it pushes its weights (version t = optimizer steps applied) to the engine
every `weight_sync_steps` steps, then orders the groups step t + L will train on, L = async_steps
- weight_sync_steps + 1. The engine works on them while the trainer trains steps t..t+L-1, so a
group is at most L + (weight_sync_steps - 1) = async_steps versions old when it is trained on;
groups are consumed in the order they were dispatched (no drops, no bias toward short
completions). Active-sampling refills are ordered at the current version and jump the queue.

`lookahead` below that (recipe `async_lookahead`) leaves slack S = async_steps - weight_sync_steps
+ 1 - lookahead: a group may then be trained up to S steps after the step it was ordered for, and a
step takes, after every group at that deadline, groups already finished (dispatch order), then
whichever finishes first. A group whose completions run long no longer holds its step: with
long-tailed lengths a capped completion decodes for minutes among hundreds of running requests
(benchmarks/RESULTS.md, 2026-12-07), and the slack gives it up to async_steps periods while fewer
steps' orders (lookahead + 1) share the engine. The bound is unchanged: ordered at step t with
weights v >= t - k + 1 and trained by t + lookahead + S, a group is at most async_steps stale. Every
group is still trained once; a step's batch leans toward groups that finished, the run's does not.
Same admission rule as open-instruct's `async_steps` (open_instruct/data_loader.py: it dispatches
async_steps x batch prompts up front and waits while training_step - last_consumed > async_steps).

The prompt queue's state covers what is in flight: `in_flight()` (dispatched, not trained) is
saved as the queue's `pending` at every checkpoint and served first on resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path


def job_seed(base: int, n: int, idx: int) -> int:
    """The sampling seed of the n-th job (prompt `idx`); completion c samples with seed + c in both
    engines. A hash, so no two jobs' seed ranges line up by construction (an affine mix of n and idx
    repeats whenever the index difference is a multiple of its stride: large datasets hit that).

    >>> job_seed(0, 1, 5) == job_seed(0, 1, 5), job_seed(0, 1, 5) != job_seed(0, 2, 5)
    (True, True)
    >>> 0 <= job_seed(3, 10**6, 10**7) < 2**31 - 64
    True
    """
    h = int.from_bytes(hashlib.blake2b(f"{base}/{n}/{idx}".encode(), digest_size=8).digest(), "little")
    return h % (2**31 - 64)  # room for seed + c below 2**31 (vLLM's seed is an int64, torch's any int)


@dataclass
class RolloutJob:
    """One prompt's group of completions, ordered at policy `version`."""
    idx: int
    prompt_ids: list[int]
    n: int
    version: int
    seed: int
    urgent: bool = False
    max_tokens: list[int] | None = None
    """Per-completion token limits (benchmarks draw long-tailed lengths); None = the stage's."""
    step: int | None = None
    """The optimizer step that will train on it (a refill: the current one). A server running
    vLLM's priority scheduling serves lower steps first (engines.VLLMServerEngine)."""


@dataclass
class RolloutGroup:
    idx: int
    prompt_ids: list[int]
    completion_ids: list[list[int]]
    logprobs: list[list[float]]
    """The engine's logprob of each sampled token (after temperature), for TIS."""
    version: int
    """Policy version (optimizer steps applied) of the weights the group was sampled with."""
    version_end: int | None = None
    """vLLM with in-flight updates (`pause?mode=keep`): the version when its last token came; a
    completion that spans a weight update is sampled by both (TIS covers the newer part too)."""
    times: dict = field(default_factory=dict)


class RolloutProducer:
    """Trainer-side half: what to order when, what to hand the trainer, what is in flight.
    `engine.submit(jobs)` runs an order's jobs (in a background thread or a server) and returns a
    Future per job."""

    def __init__(self, engine, queue, tokenize, num_generations: int, prompts_per_step: int, async_steps: int,
                 weight_sync_steps: int = 1, max_steps: int | None = None, seed: int = 0, log_path: Path | None = None,
                 max_tokens_fn=None, lookahead: int | None = None):
        self.engine, self.queue, self.tokenize = engine, queue, tokenize
        self.g, self.want, self.n_async, self.k = num_generations, prompts_per_step, async_steps, weight_sync_steps
        full = async_steps - weight_sync_steps + 1  # the furthest ahead the staleness bound allows
        self.lookahead = full if lookahead is None else lookahead
        if not 0 <= self.lookahead <= full:
            raise ValueError(f"lookahead {lookahead}: must be in [0, async_steps - weight_sync_steps + 1 = {full}]")
        self.slack = full - self.lookahead
        self.max_steps, self.seed, self.log_path, self.max_tokens_fn = max_steps, seed, log_path, max_tokens_fn
        self.ahead: deque[tuple[int, int, Future]] = deque()  # (step it is for, idx, future), dispatch order
        self.ordered_through = -1  # last step whose primary groups are ordered
        self.version = -1  # last version pushed to the engine
        self.step = 0
        self.wait_s = 0.0
        self._lags: list[int] = []
        self._latency: list[float] = []
        self._orders = 0

    def _order(self, idxs: list[int], urgent: bool = False, step: int | None = None) -> list[Future]:
        jobs = []
        for i in idxs:
            self._orders += 1
            seed = job_seed(self.seed, self._orders, i)
            mt = self.max_tokens_fn(i, self.g) if self.max_tokens_fn else None
            jobs.append(RolloutJob(i, self.tokenize(i), self.g, self.version, seed, urgent, mt,
                                   self.step if step is None else step))
        t0 = time.perf_counter()
        futs = self.engine.submit(jobs)
        for f in futs:  # order-to-done latency, the figure that sizes lookahead (step_metrics)
            f.ordered_at = t0
            f.add_done_callback(lambda f: setattr(f, "done_at", time.perf_counter()))
        if step is not None:
            self.ahead.extend((step, i, f) for i, f in zip(idxs, futs))
        return futs

    def step_start(self, model, step: int, max_steps: int | None = None) -> float:
        """Start of optimizer step `step` (0-based): push weights (every k steps), order up to
        step + L. Returns the seconds spent pushing weights."""
        self.step, t = step, 0.0
        self.max_steps = max_steps or self.max_steps
        if step % self.k == 0 or self.version < 0:
            t0 = time.perf_counter()
            self.engine.sync_weights(model, step)
            self.version, t = step, time.perf_counter() - t0
        last = step + self.lookahead
        if self.max_steps is not None and self.max_steps > 0:
            last = min(last, self.max_steps - 1)  # never draw prompts no step will train on
        for s in range(max(self.ordered_through + 1, step), last + 1):
            self._order(self.queue.take(self.want), step=s)
            self.ordered_through = s
        return t

    def primary(self, n: int) -> list[RolloutGroup]:
        """The groups ordered for this step, oldest first (blocks until they are done). With slack:
        every group at its deadline, then finished ones, then the first to finish (module docstring)."""
        if len(self.ahead) < n:
            raise RuntimeError(f"rollout producer: {n} groups wanted, {len(self.ahead)} ordered")
        if not self.slack:
            return self._wait([self.ahead.popleft()[2] for _ in range(n)])
        t0 = time.perf_counter()
        entries = list(self.ahead)
        due = [j for j, e in enumerate(entries) if e[0] + self.slack <= self.step]
        done = [j for j, e in enumerate(entries) if e[0] + self.slack > self.step and e[2].done()]
        pick = due[:n] + done[:max(n - len(due), 0)]
        while len(pick) < n:
            rest = [j for j in range(len(entries)) if j not in pick]
            futures_wait([entries[j][2] for j in rest], return_when=FIRST_COMPLETED)
            pick += [j for j in rest if entries[j][2].done()][:n - len(pick)]
        pick = sorted(pick)  # dispatch order within the step
        taken = set(pick)
        self.ahead = deque(e for j, e in enumerate(entries) if j not in taken)
        return self._wait([entries[j][2] for j in pick], t0)

    def refill(self, n: int) -> list[RolloutGroup]:
        """Fresh groups at the engine's current version, ahead of anything ordered for later steps."""
        return self._wait(self._order(self.queue.take(n), urgent=True))

    def _wait(self, futs: list[Future], t0: float | None = None) -> list[RolloutGroup]:
        t0 = time.perf_counter() if t0 is None else t0
        out = [f.result() for f in futs]  # an engine error re-raises here, on the training thread
        self.wait_s += time.perf_counter() - t0
        # a waiter can wake before the future's callbacks have run: then it is done about now
        self._latency += [getattr(f, "done_at", time.perf_counter()) - f.ordered_at for f in futs]
        return out

    def in_flight(self) -> list[int]:
        """Prompts dispatched but not yet trained on, in dispatch order (the queue saves them as pending)."""
        return [i for _, i, _ in self.ahead]

    def step_metrics(self) -> dict[str, float]:
        """Staleness in optimizer steps over the groups the step trained (`log`; active sampling's
        dropped groups do not count); over every group it took (refills included): the trainer's
        seconds blocked waiting for rollouts and seconds from order to the group's last completion;
        groups still in flight for later steps. The latency sizes the schedule: a step
        waits less when lookahead + 1 steps outlast the mean (Little's law: that many steps' groups
        in flight) and async_steps steps outlast the max (README, async RL)."""
        lag, lat = self._lags, self._latency
        out = {"async/staleness_mean": sum(lag) / max(len(lag), 1), "async/staleness_max": float(max(lag, default=0)),
               "async/wait_s": self.wait_s, "async/in_flight": float(len(self.ahead))}
        if lat:
            out["async/group_latency_s_mean"] = sum(lat) / len(lat)
            out["async/group_latency_s_max"] = max(lat)
        if self.slack:  # groups ordered for this step or earlier that a finished group stood in for
            out["async/slipped"] = float(sum(s <= self.step for s, _, _ in self.ahead))
        self.wait_s, self._lags, self._latency = 0.0, [], []
        return out

    def log(self, groups: list[RolloutGroup], rank: int) -> None:
        """The step's trained groups (after active sampling's selection): their staleness for
        `step_metrics`, and one line each in the log: which prompt, at which step, by which version."""
        self._lags += [self.step - gr.version for gr in groups]
        if self.log_path is None:
            return
        with self.log_path.open("a") as f:
            for gr in groups:
                f.write(json.dumps({"step": self.step, "rank": rank, "idx": gr.idx, "version": gr.version,
                                    "version_end": gr.version_end, "staleness": self.step - gr.version}) + "\n")

    def close(self) -> None:
        for _, _, f in self.ahead:
            f.cancel()
        self.ahead.clear()
        self.engine.close()


def trim_log(path: Path, step: int) -> None:
    """On resume from the checkpoint after `step` steps: whatever was trained later was rolled
    back with its weights, so its lines go (the log is then the run's real training history)."""
    if path.is_file():
        keep = []
        for x in path.read_text().splitlines():
            try:
                if json.loads(x)["step"] < step:
                    keep.append(x)
            except (ValueError, KeyError, TypeError):  # a line cut by the kill (or a blank one): it goes too
                pass
        path.write_text("".join(x + "\n" for x in keep))


def rollout_batch(groups: list[RolloutGroup]) -> dict:
    """`rollout_func`'s answer for TRL: one row per completion, a group's rows together."""
    out = {"prompt_ids": [], "completion_ids": [], "logprobs": []}
    for gr in groups:
        for c, lp in zip(gr.completion_ids, gr.logprobs):
            out["prompt_ids"].append(gr.prompt_ids)
            out["completion_ids"].append(c)
            out["logprobs"].append(lp)
    return out
