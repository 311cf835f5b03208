"""posttrain: staged post-training (SFT -> DPO -> GRPO) for hybrid GDN/attention language models."""

__version__ = "0.1.0"
