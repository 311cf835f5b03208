"""Verifiable and judged rewards for GRPO, usable without the trainer.

Every reward is `f(completions, **columns) -> list[float | None]`, TRL GRPOTrainer's reward
signature: completions may be strings or chat message lists, extra columns are ignored, and
None means "this reward does not apply to this row". Nothing here imports trl or
posttrain.stages, so rewards can be unit-tested, benchmarked and served on their own.

>>> sorted(REWARDS)
['code', 'coin_flip', 'format_instruct', 'format_length', 'format_think', 'ifeval', 'judge', 'math']
"""

from reward import metrics
from reward.registry import REWARDS, build_reward_fn

__all__ = ["REWARDS", "build_reward_fn", "metrics"]
