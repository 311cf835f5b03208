"""Recipe YAML -> validated, typed config (omegaconf structured dataclasses).

A recipe is validated once, up front: an unknown field, a wrong type, a missing file or an
unknown stage is a one-line `RecipeError` naming the file and the field, before any model is
loaded. Stages are an ordered *mapping* keyed by stage name rather than a list, so a dotlist
override reads `stages.sft.learning_rate=1e-5` instead of `stages.0.learning_rate=...`.
Each stage is checked against the dataclass of its `kind`, so a DPO field on an SFT stage is
an error rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
# Stage names become directories and dotlist keys: no dots, slashes or leading dashes/dots.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
RESERVED = ("exports",)  # RUN/exports holds the exports


class RecipeError(ValueError):
    """A recipe problem, always one line: `FILE: FIELD: what is wrong`."""


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Base model: `tiny` (built by code), a hub id, a local HF directory, or `random:CONFIG`: random
    weights of `olmo-hybrid-7b` (transformers' defaults, the 7B) or of a hub id's/dir's config (throughput runs)."""
    tokenizer: str | None = None
    """Tokenizer source; defaults to `name`. `olmo3` (or `dolma2`): the Olmo 3 / Olmo Hybrid tokenizer,
    shipped inside posttrain (no hub needed). `tiny:N`: the character tokenizer padded to N ids."""
    dtype: str = "float32"
    """Weights dtype while training: float32 | bfloat16. bf16 on GPU; fp32 on CPU (bf16 is ~7x slower there)."""
    attn_implementation: str = "sdpa"
    """transformers attention for unpacked batches; packed batches use posttrain's varlen path."""
    allow_kernel_fallback: bool = False
    """On CUDA, allow the torch GDN/conv reference when fla is missing (19x slower: opt-in only)."""
    fused_layers: bool = True
    """On CUDA, run the stock RMSNorms and SiLU-gated MLPs through fla's fused kernels (model/fused.py):
    +13% 7B SFT tokens/s. Ignored on CPU; `false` opts out. On by default since its fp32-judged GPU test
    (tests/gpu/test_fused_layers.py) passed on an H200 on 2026-12-01."""


@dataclass
class EvalConfig:
    mix: str | None = None
    """Held-out data mix (messages with `ground_truth`, or prompts); None skips the eval."""
    max_examples: int = 200
    """Examples evaluated greedily at the end of the stage."""
    max_new_tokens: int = 96
    """Generation budget per example (tokens)."""
    batch_size: int = 64
    """Prompts per generate call."""


@dataclass
class StageBase:
    kind: str = MISSING
    """sft | dpo | grpo."""
    mix: str = MISSING
    """Training data mix: a YAML file under data_mixes/ (relative to the recipe's repo or cwd)."""
    init_from: str | None = None
    """Earlier stage whose output this stage starts from; None starts from the base model."""
    learning_rate: float = MISSING
    """Peak learning rate."""
    lr_scheduler: str = "linear"
    """linear | constant | cosine (transformers scheduler names)."""
    warmup_ratio: float = 0.0
    """Fraction of steps spent warming up linearly from 0."""
    num_epochs: float = 1.0
    """Passes over the mix."""
    max_steps: int = -1
    """Optimizer steps; overrides num_epochs when > 0."""
    max_length: int = 2048
    """Longest sequence in tokens; longer rows are truncated (kept from the start)."""
    micro_batch_size: int = 8
    """Rows per forward/backward on one device."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    """AdamW beta1 (torch's and transformers' default)."""
    adam_beta2: float = 0.999
    """AdamW beta2: 0.999 is torch's default (AI2's DPO and RL keep it); OLMo-core's Olmo 3 / Hybrid
    SFT uses 0.95."""
    bf16: bool = False
    """bf16 autocast. On for GPU recipes; off on CPU, where it makes steps ~7x slower."""
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 100
    """Trainer checkpoint interval (optimizer steps); an interrupted stage resumes from the last."""
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)


# Settings that decide how a stage is evaluated, logged or checkpointed, never its weights: left out
# of the stage key (posttrain.pipeline), so changing them does not retrain. A new field belongs here
# only if a run with any value of it ends with the same weights (reward_crash_limit only stops a stage;
# the local_eval_* ones watch RL without touching it).
NOT_WEIGHTS = ("eval", "logging_steps", "save_steps", "eval_pairs", "reward_crash_limit", "local_eval_every",
               "local_eval_suite", "local_eval_examples")


def weight_settings(stage: StageBase) -> dict:
    """A stage's settings that decide its weights (all but NOT_WEIGHTS)."""
    d = OmegaConf.to_container(OmegaConf.structured(stage), resolve=True)
    return {k: v for k, v in d.items() if k not in NOT_WEIGHTS and not (k in ADDED_OFF and v == ADDED_OFF[k])}


# Fields added after runs existed, at the value that means "as before": left out of the stage key
# there, so stages finished before the field existed are still recognised as done.
ADDED_OFF = {"sft_weight": 0.0, "async_lookahead": None}


@dataclass
class SFTStage(StageBase):
    batch_tokens: int = 8192
    """Tokens per optimizer step (global). Rows per step = batch_tokens // max_length."""
    packing: bool = True
    """Pack rows padding-free (TRL best-fit decreasing) with exact document boundaries for the GDN
    state, the conv and attention. On by default: at 16-32K context padding wastes most of a GPU."""


@dataclass
class DPOStage(StageBase):
    loss_type: str = "dpo_norm"
    """dpo_norm (length-normalized; TRL sigmoid_norm) | dpo (sigmoid)."""
    sft_weight: float = 0.0
    """Weight of a negative log-likelihood term on the chosen completions (mean per token), added to
    the preference loss: TRL's `loss_type` "sft" (RPO). DPO alone tends to push the chosen answers'
    likelihood down with the rejected ones; on math, Pang et al. 2024 ("Iterative Reasoning Preference
    Optimization", arXiv 2404.19733) needed the NLL term for accuracy to rise. 0 = plain DPO."""
    beta: float = 5.0
    batch_pairs: int = 128
    """Preference pairs per optimizer step (global)."""
    packing: bool = True
    """Pack pairs (chosen and rejected) into rows of max_length tokens, as many pairs a row as fit, exact
    boundaries; micro_batch_size then only sizes the reference precompute and eval batches."""
    overlong: str = "truncate"
    """Pairs longer than max_length: truncate (keep the start) | drop."""
    eval_pairs: str | None = None
    """Held-out preference mix: preference accuracy and reward margin before and after the stage."""
    rejected_from_policy: bool = False
    """Replace each pair's rejected answer with the starting model's own sampled answer when the
    math reward marks it wrong (on-policy negatives; rows need ground_truth). Off-policy negatives
    that the model would never produce teach it little and can pull its good answers down too."""
    rejected_max_new_tokens: int = 128
    """Generation budget for those samples (tokens)."""


@dataclass
class GRPOStage(StageBase):
    rollouts_per_prompt: int = 8
    prompts_per_step: int = 64
    mini_batches: int = 1
    """Optimizer steps per generation batch (open-instruct `num_mini_batches`): the
    prompts_per_step x rollouts_per_prompt completions are split into this many steps."""
    beta: float = 0.0
    """KL coefficient; OlmoRL uses none."""
    loss_type: str = "dapo"
    """Token-level loss (TRL `dapo`)."""
    epsilon: float = 0.2
    epsilon_high: float = 0.272
    scale_rewards: str = "none"
    """Advantage = reward - group mean, no std scaling."""
    temperature: float = 1.0
    max_prompt_length: int = 2048
    max_completion_length: int = 8192
    mask_truncated_completions: bool = True
    tis_cap: float = 2.0
    """Truncated importance sampling cap against the rollout engine's logprobs."""
    active_sampling: bool = True
    """Drop zero-variance groups and refill the batch."""
    skip_solved_rate: float = 0.875
    """Stop re-sampling prompts solved at least this often."""
    solve_threshold: float = 1.0
    """A rollout counts as solving its prompt when its weighted reward is at least this."""
    rewards: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "math", "weight": 1.0}])
    reward_crash_limit: float = 0.05
    """Stop the stage when a reward crashes on more than this fraction of its rows in a logging step."""
    engine: str = "hf"
    """Rollout engine: hf (transformers generate) | vllm."""
    vllm_mode: str = "colocate"
    """colocate (same GPUs, sleep/wake between generation and training) | server (`trl vllm-serve`)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Fraction of each GPU vLLM may take in colocate mode (the rest trains)."""
    vllm_server_base_url: str | None = None
    """Server mode: where `trl vllm-serve` listens (NCCL weight updates go to its group port). The
    server must serve the stage's starting model: TRL first syncs weights after the first step."""
    local_eval_every: int = 0
    """Every N optimizer steps, score the in-training model (open-instruct's `local_eval_every`);
    0 = off. Logged as local_eval/* rows in metrics.jsonl; not part of the stage key (it only observes)."""
    local_eval_suite: str | None = None
    """A benchmark suite (suites/NAME.yaml or a file) for it; None = eval.mix, greedy."""
    local_eval_examples: int = 64
    """Rows of eval.mix per local eval (ignored with a suite, whose tasks set their own sizes)."""
    async_steps: int = 0
    """Asynchronous RL: a rollout producer generates up to this many optimizer steps ahead of the
    trainer, so every sample is at most this many steps stale (0 = generate, then train, each step).
    Needs engine hf or vllm_mode server; TIS against the engine's logprobs corrects the lag."""
    weight_sync_steps: int = 1
    """Async: push the trainer's weights to the engine every this many optimizer steps (at most
    async_steps + 1, which keeps the staleness bound)."""
    async_lookahead: int | None = None
    """Async: order each step's prompts this many steps before it trains (None = async_steps -
    weight_sync_steps + 1, the most the bound allows). Less leaves slack: a group whose completions
    run long may be trained up to that many steps later, finished groups taking its place, still
    within async_steps (rollout/producer.py). For long-tailed lengths: e.g. async_steps 4, lookahead 2."""


@dataclass
class ExportConfig:
    stage: str = MISSING
    """Stage whose model is exported."""
    kind: str = "instruct"
    """instruct | think: which chat template and generation defaults ship with it."""
    out: str | None = None
    """Output dir; default RUN/exports/<kind>."""


@dataclass
class BenchmarkConfig:
    suite: str = MISSING
    """Benchmark suite: think | instruct | tiny | a suite YAML (suites/)."""
    after: str = "exports"
    """When: "exports" (every export, beside the stage it came from) or a stage name (that stage,
    beside the one before it)."""
    backend: str | None = None
    """hf | vllm; default vllm on CUDA, hf otherwise."""
    data_dir: str | None = None
    """Offline: DIR/<task>.jsonl per task instead of the hub (default $POSTTRAIN_EVAL_DATA)."""
    judge_url: str | None = None
    """OpenAI-compatible judge endpoint: enables the suite's judged chat tasks."""
    judge_model: str | None = None


@dataclass
class RecipeConfig:
    name: str = MISSING
    """Run name: outputs go to output_dir (default checkpoints/<name>)."""
    output_dir: str | None = None
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    chat_template: str = "olmo-instruct"
    """olmo3-instruct | olmo3-think (AI2's open-instruct `olmo` / `olmo_thinker`, for the real Olmo
    tokenizer) | olmo-instruct | olmo-think (the tiny demo's plain ChatML) | path to a Jinja file
    with {% generation %} markers."""
    chat_template_system: str | None = None
    """olmo3-* only: the system turn added to conversations without one. None keeps AI2's text,
    `none` adds no system turn, any other text replaces it (rendered like a given system message)."""
    kernel_cache: str = "user"
    """Where compiled/autotuned GPU kernels are kept for later stages and reruns: user (~/.cache/posttrain/
    kernels, or $POSTTRAIN_KERNEL_CACHE) | run (OUTPUT_DIR/kernel_cache) | none | a directory
    (posttrain/model/compile_cache.py). Not part of any stage's key: it never changes results."""
    stages: dict[str, Any] = field(default_factory=dict)
    exports: list[ExportConfig] = field(default_factory=list)
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    """Benchmark suites run after the stages and exports (posttrain/harness.py); none by default."""


@dataclass
class Recipe:
    """A validated recipe: the config plus where it came from."""
    cfg: RecipeConfig
    source: str
    stages: dict[str, StageBase]

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir or f"checkpoints/{self.cfg.name}")

    def stage_dict(self, name: str) -> dict:
        return OmegaConf.to_container(OmegaConf.structured(self.stages[name]), resolve=True)


def find_recipe(ref: str) -> Path:
    """`tiny` -> recipes/tiny.yaml; otherwise a path."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise RecipeError(f"{ref}: recipe file not found")
        return p
    cand = RECIPES_DIR / f"{ref}.yaml"
    if cand.is_file():
        return cand
    known = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml"))
    raise RecipeError(f"{ref}: no such recipe file or built-in recipe (built-in: {', '.join(known)})")


def _one_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    key = getattr(e, "full_key", None) or getattr(e, "key", None)
    if isinstance(msg, str) and msg.startswith("Key '") and "' not in '" in msg:
        msg = "unknown field (" + msg.split("' not in '")[1].rstrip("'") + " has no such field)"
    return f"{key}: {msg}" if key else msg


def suite_ref(ref: str, recipe_path: Path) -> str:
    """A suite file next to the recipe / repo, or a built-in suite name as is."""
    p = _resolve_path(ref, recipe_path)
    return str(p) if p is not None and p.is_file() else ref


def _resolve_path(p: str, recipe_path: Path) -> Path | None:
    """Data/file references resolve against cwd, then the recipe's repo root."""
    for base in (Path.cwd(), recipe_path.resolve().parent.parent, recipe_path.resolve().parent):
        if (base / p).exists():
            return base / p
    return None


def load_recipe(ref: str, overrides: list[str] | None = None, mixes: dict[str, str] | None = None) -> Recipe:
    path = find_recipe(ref)
    src = str(path)
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml syntax
        raise RecipeError(f"{src}: {yaml_error(e)}") from None
    if not isinstance(raw, DictConfig):
        raise RecipeError(f"{src}: a recipe must be a mapping at the top level")
    written = list((raw.get("stages") or {}).keys()) if isinstance(raw.get("stages"), DictConfig) else []
    adds_kind = {o.split("=", 1)[0].split(".")[1] for o in overrides or []
                 if o.startswith("stages.") and o.split("=", 1)[0].count(".") == 2 and o.split("=", 1)[0].endswith(".kind")}
    for o in overrides or []:
        if "=" not in o:
            raise RecipeError(f"{src}: override {o!r} must look like key=value")
        key, _ = o.split("=", 1)
        parts = key.split(".")
        if parts[0] == "stages" and len(parts) > 2 and parts[1] not in written and parts[1] not in adds_kind:
            # Without this the new, kind-less stage would be blamed for its `kind`.
            raise RecipeError(f"{src}: override {key}: no stage named {parts[1]!r} (stages: {', '.join(map(str, written))})")
        try:
            raw.merge_with(OmegaConf.from_dotlist([o]))
        except OmegaConfBaseException as e:
            raise RecipeError(f"{src}: override {key}: {_one_line(e)}") from None
    for stage, mix in (mixes or {}).items():
        if stage not in (raw.get("stages") or {}):
            raise RecipeError(f"{src}: --mix {stage}=...: no stage named {stage!r}")
        raw.stages[stage].mix = mix

    stages_raw = raw.pop("stages", None) or {}
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RecipeConfig), raw)
    except OmegaConfBaseException as e:
        raise RecipeError(f"{src}: {_one_line(e)}") from None
    if not isinstance(stages_raw, DictConfig) or not stages_raw:
        raise RecipeError(f"{src}: stages: a recipe needs a mapping of stage name -> stage settings")
    from posttrain.stages.registry import STAGES  # the kinds and their config classes
    stages: dict[str, StageBase] = {}
    for name, body in stages_raw.items():
        where = f"{src}: stages.{name}"
        kind = body.get("kind") if isinstance(body, DictConfig) else None
        if kind not in STAGES:
            raise RecipeError(f"{where}.kind: must be one of {', '.join(STAGES)}, got {kind!r}")
        try:
            sc = OmegaConf.merge(OmegaConf.structured(STAGES[kind].config), body)
            missing = sorted(OmegaConf.missing_keys(sc))
            if missing:
                raise RecipeError(f"{where}.{missing[0]}: required field is missing")
            stages[str(name)] = OmegaConf.to_object(sc)
        except OmegaConfBaseException as e:
            raise RecipeError(f"{where}.{_one_line(e)}") from None
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise RecipeError(f"{src}: {missing[0]}: required field is missing")
        obj: RecipeConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise RecipeError(f"{src}: {_one_line(e)}") from None
    recipe = Recipe(cfg=obj, source=src, stages=stages)
    from posttrain.recipe_checks import check_recipe  # the cross-field rules, in their own module
    check_recipe(recipe, path)
    return recipe


def yaml_error(e: Exception) -> str:
    """A YAML error in one line, with its line number and key (a duplicate key names both)."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}: not valid YAML: {problem}"
    return f"not valid YAML: {_one_line(e)}"


def resolve_file(ref: str, recipe: Recipe) -> Path:
    p = _resolve_path(ref, Path(recipe.source))
    if p is None:
        raise RecipeError(f"{recipe.source}: file not found: {ref}")
    return p


def stage_to_yaml(stage: StageBase) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(stage))


def asdict(x) -> dict:
    return dataclasses.asdict(x)
