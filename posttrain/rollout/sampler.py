"""The RL prompt queue: seeded order, pass-rate skipping, resumable state.

TRL's GRPOTrainer draws a fixed batch of prompts per step. OlmoRL does two things on top:
active sampling (groups whose rollouts all got the same reward carry no advantage, so they
are dropped and more prompts are drawn until the batch is full) and pass-rate skipping
(a prompt solved at least `skip_solved_rate` of the time is not drawn again). Both need a
prompt source the stage controls, with state that survives a resume, so a killed run
never replays prompts it already used. With async RL, prompts are drawn steps before they are
trained on: `pending` (drawn, still in flight at a checkpoint) is saved and served first on resume.
"""

from __future__ import annotations

import random


class PromptQueue:
    """Seeded epochs over row indices; each rank takes every world-th index from its offset."""

    def __init__(self, rows: list[dict], seed: int = 0, skip_solved_rate: float = 0.875, min_attempts: int = 1,
                 rank: int = 0, world: int = 1):
        self.rows, self.seed, self.skip, self.min_attempts = rows, seed, skip_solved_rate, min_attempts
        self.rank, self.world = rank, world
        self.epoch, self.pos = 0, 0
        self.solved: dict[int, list[int]] = {}  # row index -> [solved completions, completions]
        self.skipped = 0
        self.pending: list[int] = []  # drawn before a checkpoint, not yet trained on: served first
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order[self.rank::self.world]

    def is_retired(self, i: int) -> bool:
        s, n = self.solved.get(i, (0, 0))
        return n >= self.min_attempts and s / n >= self.skip

    def take(self, n: int) -> list[int]:
        """Next n prompt indices, skipping retired ones; a full pass of retired prompts stops the run."""
        out, scanned = self.pending[:n], 0
        self.pending = self.pending[n:]
        while len(out) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order()
            i = self._order[self.pos]
            self.pos += 1
            scanned += 1
            if self.is_retired(i):
                self.skipped += 1
                if scanned > 2 * len(self._order) + n:
                    raise RuntimeError("every RL prompt is solved at or above skip_solved_rate: nothing left to learn")
                continue
            out.append(i)
        return out

    def record(self, i: int, solved: int, total: int) -> None:
        s, t = self.solved.get(i, (0, 0))
        self.solved[i] = [s + solved, t + total]

    def state_dict(self, in_flight: list[int] = ()) -> dict:
        """`in_flight`: prompts drawn but not yet trained on (async RL); a resumed run trains them first."""
        return {"epoch": self.epoch, "pos": self.pos, "skipped": self.skipped,
                "pending": list(in_flight) + self.pending, "solved": {str(k): v for k, v in self.solved.items()}}

    def load_state_dict(self, st: dict) -> None:
        self.epoch, self.pos, self.skipped = st["epoch"], st["pos"], st.get("skipped", 0)
        self.pending = list(st.get("pending", []))
        self.solved = {int(k): v for k, v in st["solved"].items()}
        self._order = self._epoch_order()


def nonzero_variance_groups(rewards: list[float], group: int, tol: float = 1e-6) -> list[bool]:
    """Per group of `group` consecutive rewards: does it carry any advantage?

    >>> nonzero_variance_groups([1, 1, 0, 1, 0, 0, 0, 0], 4)
    [True, False]
    """
    return [max(rewards[g:g + group]) - min(rewards[g:g + group]) > tol for g in range(0, len(rewards), group)]
