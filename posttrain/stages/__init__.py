"""Stages: thin layers over TRL trainers. Each exposes `run(ctx: StageContext) -> dict`."""
