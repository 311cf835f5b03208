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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
KINDS = ("sft", "dpo", "grpo")


class RecipeError(ValueError):
    """A recipe problem, always one line: `FILE: FIELD: what is wrong`."""


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Base model: `tiny` (built by code), a hub id, a local HF directory, or `random:CONFIG`: random
    weights of `olmo-hybrid-7b` (transformers' defaults, the 7B) or of a hub id's/dir's config (throughput runs)."""
    tokenizer: str | None = None
    """Tokenizer source; defaults to `name`. `tiny:N` is the character tokenizer padded to N ids."""
    dtype: str = "float32"
    """Weights dtype while training: float32 | bfloat16. bf16 on GPU; fp32 on CPU (bf16 is ~7x slower there)."""
    attn_implementation: str = "sdpa"
    """transformers attention for unpacked batches; packed batches use posttrain's varlen path."""
    allow_kernel_fallback: bool = False
    """On CUDA, allow the torch GDN/conv reference when fla is missing (19x slower: opt-in only)."""
    fused_layers: bool = False
    """On CUDA, run the stock RMSNorms and SiLU-gated MLPs through fla's fused kernels (model/fused.py):
    +13% 7B SFT tokens/s. Ignored on CPU. Off until tests/gpu/test_fused_layers.py (judged against fp32)
    has passed on a GPU; then on by default."""


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
    bf16: bool = False
    """bf16 autocast. On for GPU recipes; off on CPU, where it makes steps ~7x slower."""
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 100
    """Trainer checkpoint interval (optimizer steps); an interrupted stage resumes from the last."""
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)


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
    engine: str = "hf"
    """Rollout engine: hf (transformers generate) | vllm."""
    vllm_mode: str = "colocate"
    """colocate (same GPUs, sleep/wake between generation and training) | server (`trl vllm-serve`)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Fraction of each GPU vLLM may take in colocate mode (the rest trains)."""
    vllm_server_base_url: str | None = None
    """Server mode: where `trl vllm-serve` listens (NCCL weight updates go to its group port). The
    server must serve the stage's starting model: TRL first syncs weights after the first step."""


STAGE_TYPES = {"sft": SFTStage, "dpo": DPOStage, "grpo": GRPOStage}


@dataclass
class ExportConfig:
    stage: str = MISSING
    """Stage whose model is exported."""
    kind: str = "instruct"
    """instruct | think: which chat template and generation defaults ship with it."""
    out: str | None = None
    """Output dir; default RUN/exports/<kind>."""


@dataclass
class RecipeConfig:
    name: str = MISSING
    """Run name: outputs go to output_dir (default checkpoints/<name>)."""
    output_dir: str | None = None
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    chat_template: str = "olmo-instruct"
    """olmo-instruct | olmo-think | path to a Jinja file with {% generation %} markers."""
    kernel_cache: str = "user"
    """Where compiled/autotuned GPU kernels are kept for later stages and reruns: user (~/.cache/posttrain/
    kernels, or $POSTTRAIN_KERNEL_CACHE) | run (OUTPUT_DIR/kernel_cache) | none | a directory
    (posttrain/model/compile_cache.py). Not part of any stage's key: it never changes results."""
    stages: dict[str, Any] = field(default_factory=dict)
    exports: list[ExportConfig] = field(default_factory=list)


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
        raise RecipeError(f"{src}: not valid YAML: {_one_line(e)}") from None
    if not isinstance(raw, DictConfig):
        raise RecipeError(f"{src}: a recipe must be a mapping at the top level")
    for o in overrides or []:
        if "=" not in o:
            raise RecipeError(f"{src}: override {o!r} must look like key=value")
        key, _ = o.split("=", 1)
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
    stages: dict[str, StageBase] = {}
    for name, body in stages_raw.items():
        where = f"{src}: stages.{name}"
        kind = body.get("kind") if isinstance(body, DictConfig) else None
        if kind not in STAGE_TYPES:
            raise RecipeError(f"{where}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
        try:
            sc = OmegaConf.merge(OmegaConf.structured(STAGE_TYPES[kind]), body)
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
    _check(recipe, path)
    return recipe


def _check(r: Recipe, path: Path) -> None:
    """Cross-field rules that types alone cannot express."""
    src, names = r.source, list(r.stages)
    from posttrain.data.templates import TEMPLATES
    if r.cfg.chat_template not in TEMPLATES and _resolve_path(r.cfg.chat_template, path) is None:
        raise RecipeError(f"{src}: chat_template: {r.cfg.chat_template!r} is neither a built-in template "
                          f"({', '.join(TEMPLATES)}) nor an existing file")
    if r.cfg.model.dtype not in ("float32", "bfloat16"):
        raise RecipeError(f"{src}: model.dtype: must be float32 or bfloat16, got {r.cfg.model.dtype!r}")
    for i, (name, st) in enumerate(r.stages.items()):
        where = f"{src}: stages.{name}"
        if st.init_from is not None and st.init_from not in names[:i]:
            raise RecipeError(f"{where}.init_from: {st.init_from!r} is not an earlier stage (earlier: {names[:i] or 'none'})")
        for key, mix in (("mix", st.mix), ("eval.mix", st.eval.mix)):
            if mix is not None and _resolve_path(mix, path) is None:
                raise RecipeError(f"{where}.{key}: data mix file not found: {mix}")
        if st.lr_scheduler not in ("linear", "constant", "cosine", "constant_with_warmup"):
            raise RecipeError(f"{where}.lr_scheduler: unknown schedule {st.lr_scheduler!r}")
        if not 0 <= st.warmup_ratio < 1:
            raise RecipeError(f"{where}.warmup_ratio: must be in [0, 1), got {st.warmup_ratio}")
        if st.learning_rate <= 0:
            raise RecipeError(f"{where}.learning_rate: must be > 0, got {st.learning_rate}")
        if isinstance(st, SFTStage) and st.batch_tokens < st.max_length:
            raise RecipeError(f"{where}.batch_tokens: {st.batch_tokens} is smaller than one row (max_length {st.max_length})")
        if isinstance(st, DPOStage) and st.eval_pairs and _resolve_path(st.eval_pairs, path) is None:
            raise RecipeError(f"{where}.eval_pairs: data mix file not found: {st.eval_pairs}")
        if isinstance(st, DPOStage) and st.overlong not in ("truncate", "drop"):
            raise RecipeError(f"{where}.overlong: must be truncate or drop, got {st.overlong!r}")
        if isinstance(st, DPOStage) and st.loss_type not in ("dpo_norm", "dpo"):
            raise RecipeError(f"{where}.loss_type: must be dpo_norm or dpo, got {st.loss_type!r}")
        if isinstance(st, GRPOStage) and st.engine not in ("hf", "vllm"):
            raise RecipeError(f"{where}.engine: must be hf or vllm, got {st.engine!r}")
        if isinstance(st, GRPOStage) and st.vllm_mode not in ("colocate", "server"):
            raise RecipeError(f"{where}.vllm_mode: must be colocate or server, got {st.vllm_mode!r}")
        if isinstance(st, GRPOStage) and st.engine == "vllm" and st.vllm_mode == "server" and not st.vllm_server_base_url:
            raise RecipeError(f"{where}.vllm_server_base_url: server mode needs the URL of a running `trl vllm-serve`")
    for i, ex in enumerate(r.cfg.exports):
        if ex.stage not in names:
            raise RecipeError(f"{src}: exports.{i}.stage: no stage named {ex.stage!r} (stages: {', '.join(names)})")
        if ex.kind not in ("instruct", "think"):
            raise RecipeError(f"{src}: exports.{i}.kind: must be instruct or think, got {ex.kind!r}")


def resolve_file(ref: str, recipe: Recipe) -> Path:
    p = _resolve_path(ref, Path(recipe.source))
    if p is None:
        raise RecipeError(f"{recipe.source}: file not found: {ref}")
    return p


def stage_to_yaml(stage: StageBase) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(stage))


def asdict(x) -> dict:
    return dataclasses.asdict(x)
