"""Every private TRL / transformers name posttrain overrides or calls still exists, with the arguments
posttrain passes. pyproject pins both to the minors tested; this is what to run when moving a pin."""

import importlib
import inspect

import pytest

# (class, method posttrain overrides or calls): an override whose parent method was renamed is
# silently never called, so the check is on the parent class.
METHODS = [
    ("trl:SFTTrainer", "compute_loss"),                    # stages/sft.py FixedRowSFTTrainer
    ("trl:DPOTrainer", "_compute_loss"),                   # stages/dpo.py CachedRefDPOTrainer
    ("trl:DPOTrainer", "_precompute_ref_logps"),
    ("trl:DPOTrainer", "get_train_dataloader"),
    ("trl:DPOTrainer", "_prepare_inputs"),
    ("trl:GRPOTrainer", "_calculate_rewards"),             # stages/rl.py ActiveGRPOTrainer
    ("trl:GRPOTrainer", "_generate"),
    ("trl:GRPOTrainer", "_generate_and_score_completions"),
    ("trl:GRPOTrainer", "training_step"),
    ("trl:GRPOTrainer", "_save_checkpoint"),
    ("trl:GRPOTrainer", "log"),
    ("trl:GRPOTrainer", "_compute_loss"),                  # stages/rl.py: TIS from the training forward
    ("trl:GRPOTrainer", "_get_per_token_logps_and_entropies"),
    ("transformers.models.olmo_hybrid.modeling_olmo_hybrid:OlmoHybridGatedDeltaNet", "forward"),  # model/packing.py
]
# The same parameters as the parent, where posttrain's override names them.
OVERRIDES = [
    ("posttrain.stages.sft:FixedRowSFTTrainer", "compute_loss"),
    ("posttrain.stages.dpo:CachedRefDPOTrainer", "_compute_loss"),
    ("posttrain.stages.dpo:CachedRefDPOTrainer", "_precompute_ref_logps"),
    ("posttrain.stages.rl:ActiveGRPOTrainer", "_calculate_rewards"),
    ("posttrain.stages.rl:ActiveGRPOTrainer", "_generate"),
    ("posttrain.stages.rl:ActiveGRPOTrainer", "_generate_and_score_completions"),
    ("posttrain.stages.rl:ActiveGRPOTrainer", "_save_checkpoint"),
    ("posttrain.stages.rl:ActiveGRPOTrainer", "log"),
    ("posttrain.stages.rl:ActiveGRPOTrainer", "_compute_loss"),
    ("posttrain.model.packing:PackedGatedDeltaNet", "forward"),
]
# Attributes the trainers set on themselves that posttrain reads or writes.
INSTANCE_ATTRIBUTES = [
    ("trl:SFTTrainer", "_total_train_tokens"), ("trl:SFTTrainer", "_metrics"),
    ("trl:DPOTrainer", "_precompute_model_hash"), ("trl:DPOTrainer", "_precompute_engine"),
    ("trl:DPOTrainer", "_metrics"),
    ("trl:GRPOTrainer", "_step"), ("trl:GRPOTrainer", "_metrics"),
    ("trl:GRPOTrainer", "current_gradient_accumulation_steps"),
    ("trl:GRPOTrainer", "_last_loaded_step"), ("trl:GRPOTrainer", "use_vllm"),  # rollout/async_stage.py
    ("trl:GRPOTrainer", "vllm_importance_sampling_correction"), ("trl:GRPOTrainer", "vllm_importance_sampling_mode"),
    ("trl:GRPOTrainer", "vllm_importance_sampling_clip_max"), ("trl:GRPOTrainer", "vllm_importance_sampling_clip_min"),
    ("trl:GRPOTrainer", "num_iterations"),  # stages/rl_tis.py
]
# Module-level names posttrain imports or patches.
NAMES = [
    ("trl.models", "prepare_deepspeed"),
    ("transformers.integrations.accelerate", "force_accelerate_hooks"),
    ("transformers.masking_utils", "ALL_MASK_ATTENTION_FUNCTIONS"),
    ("transformers.masking_utils", "AttentionMaskInterface"),
    ("transformers.modeling_utils", "ALL_ATTENTION_FUNCTIONS"),
    ("transformers.modeling_utils", "AttentionInterface"),
    ("transformers.models.olmo_hybrid.modeling_olmo_hybrid", "OlmoHybridModel"),
    ("transformers.models.olmo_hybrid.modeling_olmo_hybrid", "OlmoHybridMLP"),
    ("transformers.models.olmo_hybrid.modeling_olmo_hybrid", "OlmoHybridRMSNorm"),
    ("transformers.models.olmo_hybrid.modeling_olmo_hybrid", "eager_attention_forward"),
    ("transformers.models.olmo_hybrid.modeling_olmo_hybrid", "causal_conv1d_fn"),
    ("transformers.models.olmo_hybrid.modeling_olmo_hybrid", "torch_chunk_gated_delta_rule"),
]


def _obj(ref: str):
    mod, _, name = ref.partition(":")
    return getattr(importlib.import_module(mod), name)


@pytest.mark.parametrize("cls,name", METHODS, ids=[f"{c.split(':')[1]}.{n}" for c, n in METHODS])
def test_overridden_and_called_methods_exist(cls, name):
    assert callable(getattr(_obj(cls), name, None)), f"{cls}.{name} is gone"


@pytest.mark.parametrize("cls,name", OVERRIDES, ids=[f"{c.split(':')[1]}.{n}" for c, n in OVERRIDES])
def test_overrides_take_the_parents_arguments(cls, name):
    ours = _obj(cls)
    parent = next(b for b in ours.__mro__[1:] if name in vars(b))
    mine, theirs = (inspect.signature(getattr(c, name)).parameters for c in (ours, parent))
    named = [p for p, v in mine.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    missing = [p for p in named if p not in theirs and p != "self" and mine[p].default is inspect.Parameter.empty]
    assert not missing, f"{parent.__name__}.{name} no longer takes {missing}"
    required = [p for p, v in theirs.items() if v.default is v.empty and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    has_var = any(v.kind in (v.VAR_POSITIONAL, v.VAR_KEYWORD) for v in mine.values())
    assert has_var or set(required) <= set(mine), f"{parent.__name__}.{name} now requires {required}"


@pytest.mark.parametrize("cls,attr", INSTANCE_ATTRIBUTES, ids=[f"{c.split(':')[1]}.{a}" for c, a in INSTANCE_ATTRIBUTES])
def test_trainer_attributes_posttrain_uses_are_still_set(cls, attr):
    src = "".join(inspect.getsource(c) for c in _obj(cls).__mro__ if c.__module__.startswith(("trl", "transformers")))
    assert f"self.{attr} =" in src, f"{cls} no longer sets self.{attr}"


@pytest.mark.parametrize("mod,name", NAMES, ids=[f"{m.split('.')[-1]}.{n}" for m, n in NAMES])
def test_module_names_exist(mod, name):
    assert hasattr(importlib.import_module(mod), name), f"{mod}.{name} is gone"


def test_mask_registry_still_has_its_private_mapping():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    assert isinstance(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, dict)  # model/packing.py reads it


def test_grpo_still_takes_a_rollout_func():
    """Asynchronous RL hands finished groups to TRL through `rollout_func` (rollout/async_stage.py)."""
    from trl import GRPOTrainer
    assert "rollout_func" in inspect.signature(GRPOTrainer.__init__).parameters
