"""Stage kinds. Each registers its config class (posttrain/recipe.py), the module that runs it (its
`run(ctx)` and `geometry(stage, world, items_per_micro)`), the settings a model card lists and the
metrics the report plots. A new kind is one module under stages/ and one entry in STAGES.

`geometry` is the one place batch arithmetic happens: the stage builds its trainer from it and
`posttrain run --dry-run` / posttrain.memory count steps, tokens and memory from it, so the plan
and the run cannot disagree; sizes that do not divide are said, not rounded away silently.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

from posttrain.recipe import DPOStage, GRPOStage, SFTStage, StageBase


@dataclass(frozen=True)
class Geometry:
    """How one optimizer step is made of micro-batches, and what it holds."""
    micro_batch: int
    """Rows (sequences, pair rows, completions) per forward/backward on one device."""
    grad_accum: int
    world: int
    items_per_micro: float
    """Training items (rows, pairs, completions) one micro-batch holds on one device."""
    item_tokens: int
    """At most how many tokens one item holds."""
    micro_tokens: int
    """At most how many tokens one micro-batch holds on one device (the activation estimate)."""
    items_per_data_row: int = 1
    """Items a data-mix row yields (GRPO: rollouts_per_prompt completions per prompt)."""
    engine_fraction: float = 0.0
    """Fraction of each GPU a colocated rollout engine takes."""
    warnings: list[str] = field(default_factory=list)

    @property
    def items_per_step(self) -> float:
        return self.items_per_micro * self.grad_accum * self.world

    @property
    def tokens_per_step(self) -> int:
        return int(self.items_per_step * self.item_tokens)

    def steps(self, rows: int | None, num_epochs: float, max_steps: int = -1) -> int | None:
        """Optimizer steps over `rows` data-mix rows, counted as transformers' Trainer counts them
        (partial accumulation at an epoch's end still steps). None: rows unknown."""
        if max_steps > 0:
            return max_steps
        if rows is None:
            return None
        batches = math.ceil(rows * self.items_per_data_row / (self.items_per_micro * self.world))
        return math.ceil(num_epochs * max(1, math.ceil(batches / self.grad_accum)))


def accumulation(asked: float, per_micro: float, world: int, what: str, rounding=math.floor) -> tuple[int, list[str]]:
    """Micro-batches to accumulate so that a step holds about `asked` items; a warning when it cannot
    hold exactly that many."""
    accum = max(1, int(rounding(asked / (per_micro * world))))
    got = per_micro * accum * world
    warn = [] if math.isclose(got, asked) else [
        f"{what} asks for {asked:g} a step; {per_micro:g} a micro-batch x {accum} accumulated x {world} devices "
        f"gives {got:g}"]
    return accum, warn


@dataclass(frozen=True)
class Plot:
    """A report figure of one stage's logged metrics."""
    title: str
    keys: tuple[str, ...] = ()
    """These metrics, one panel each."""
    prefix: str | None = None
    """Or every numeric metric starting with this (not *_std), all on one panel."""


@dataclass(frozen=True)
class StageKind:
    kind: str
    config: type[StageBase]
    module: str
    card_fields: tuple[str, ...] = ()
    """Settings the model card lists beside the common ones."""
    plot: Plot | None = None

    def _mod(self):
        return importlib.import_module(self.module)

    def run(self, ctx) -> dict:
        return self._mod().run(ctx)

    def geometry(self, stage: StageBase, world: int = 1, items_per_micro: float | None = None) -> Geometry:
        return self._mod().geometry(stage, world, items_per_micro)


COMMON_CARD_FIELDS = ("learning_rate", "lr_scheduler", "warmup_ratio", "num_epochs", "max_steps", "max_length",
                      "micro_batch_size", "bf16", "weight_decay", "max_grad_norm", "seed")

STAGES: dict[str, StageKind] = {
    "sft": StageKind("sft", SFTStage, "posttrain.stages.sft", ("batch_tokens", "packing")),
    "dpo": StageKind("dpo", DPOStage, "posttrain.stages.dpo", ("batch_pairs", "packing", "beta", "loss_type"),
                     Plot("DPO preference accuracy and margin", keys=("rewards/accuracies", "rewards/margins"))),
    "grpo": StageKind("grpo", GRPOStage, "posttrain.stages.rl",
                      ("beta", "loss_type", "rollouts_per_prompt", "prompts_per_step", "epsilon", "epsilon_high",
                       "temperature", "max_completion_length", "rewards"),
                      Plot("GRPO rewards", prefix="reward")),
}


def stage_kind(kind: str) -> StageKind:
    return STAGES[kind]
