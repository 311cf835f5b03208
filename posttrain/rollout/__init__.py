"""Rollout engines: `hf` (transformers generate; CPU, tests, small models) and `vllm` (GPU)."""
