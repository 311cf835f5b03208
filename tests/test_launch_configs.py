"""The accelerate launch configs parse and point at DeepSpeed configs that exist and match their stage."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("stage", [2, 3])
def test_accelerate_config_points_at_matching_deepspeed_json(stage):
    cfg = yaml.safe_load((ROOT / f"recipes/accelerate/zero{stage}.yaml").read_text())
    assert cfg["distributed_type"] == "DEEPSPEED"
    ds = json.loads((ROOT / cfg["deepspeed_config"]["deepspeed_config_file"]).read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert cfg["deepspeed_config"]["zero3_init_flag"] is (stage == 3)
    # batch sizes come from the recipe through the HF Trainer, never hard-coded here
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
