"""Memory per GPU of a stage, estimated for `posttrain run --dry-run` before anything is launched.

Mixed-precision AdamW as the stages run it under DeepSpeed: bf16 weights and gradients (2 + 2
bytes a parameter) and fp32 master weights, momentum and variance (12 bytes). ZeRO-2 shards the
gradients and optimizer state over the GPUs, ZeRO-3 the weights too; without ZeRO (one GPU) the
trainer keeps weights in the model dtype and AdamW's two fp32 moments (8 bytes) beside them.
Activations are estimated for one micro-batch of `tokens` tokens: with gradient checkpointing one
bf16 hidden state per layer is kept plus one layer's working set; without it, every layer's. The
LM head's logits (bf16, plus the fp32 copy the loss makes) are counted apart: at a 100K vocabulary
they rival the rest. An estimate: kernel workspaces and allocator fragmentation come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 2**30  # the one memory unit: "GB" in posttrain (estimates, logged mem/*_gb, benchmarks) is GiB
# bytes of saved activations per token per hidden unit inside one decoder layer (q/k/v/g and GDN
# state inputs, MLP up/gate and activations, norms), bf16: a round figure from the 1B profile.
LAYER_ACT_BYTES = 34


@dataclass
class MemoryEstimate:
    params: int
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    logits_gb: float
    rollout_engine_gb: float = 0.0

    @property
    def total_gb(self) -> float:
        return (self.weights_gb + self.grads_gb + self.optimizer_gb + self.activations_gb + self.logits_gb
                + self.rollout_engine_gb)


def config_params(config) -> int:
    """Exact parameter count of the model a config describes (built on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.model.load import param_count
    with torch.device("meta"):
        return param_count(AutoModelForCausalLM.from_config(config))


def estimate(params: int, hidden: int, layers: int, vocab: int, tokens: int, gpus: int = 1, zero: int = 0,
             checkpointing: bool = True, engine_gb: float = 0.0) -> MemoryEstimate:
    """Per-GPU memory in GiB.

    >>> e = estimate(params=1_000_000_000, hidden=2048, layers=16, vocab=100_000, tokens=4096, gpus=8, zero=3)
    >>> round(e.weights_gb + e.grads_gb + e.optimizer_gb, 3)   # 16 bytes x 1e9 / 8 GPUs
    1.863
    """
    if zero == 3:
        w, g, o = 2 * params / gpus, 2 * params / gpus, 12 * params / gpus
    elif zero == 2:
        w, g, o = 2 * params, 2 * params / gpus, 12 * params / gpus
    else:
        w, g, o = 2 * params, 2 * params, 8 * params
    per_layer = tokens * hidden * LAYER_ACT_BYTES
    act = (layers * tokens * hidden * 2 + per_layer) if checkpointing else layers * per_layer
    logits = tokens * vocab * (2 + 4)
    return MemoryEstimate(params, w / GB, g / GB, o / GB, act / GB, logits / GB, engine_gb)


def stage_estimate(config, stage, gpus: int, zero: int, gpu_gb: float = 80.0, params: int | None = None):
    """Memory per GPU of a stage: its micro-batch tokens and rollout engine from the stage kind's geometry."""
    from posttrain.stages.registry import stage_kind
    params = params if params is not None else config_params(config)
    geo = stage_kind(stage.kind).geometry(stage, gpus)
    return estimate(params, config.hidden_size, config.num_hidden_layers, config.vocab_size, geo.micro_tokens,
                    gpus, zero, stage.gradient_checkpointing, engine_gb=geo.engine_fraction * gpu_gb)


def model_config(name: str):
    """The base model's config without fetching weights: `tiny`, a local dir, the hub cache, or,
    offline, transformers' OlmoHybridConfig defaults (the 7B shapes). Returns (config, note)."""
    from transformers import AutoConfig, OlmoHybridConfig
    if name == "tiny":
        from posttrain.model.tiny import build_tiny_model
        return build_tiny_model().config, ""
    from posttrain.model.load import RANDOM, SHAPES_7B
    if name.startswith(RANDOM):
        name = name[len(RANDOM):]
        if name == SHAPES_7B:
            return OlmoHybridConfig(), ""
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True), ""
    except (OSError, ValueError):
        return OlmoHybridConfig(), f"{name} not available offline: assumed OlmoHybridConfig defaults (7B shapes)"


def stage_steps(stage, rows: int | None, gpus: int = 1) -> tuple[int | None, int, list[str]]:
    """Optimizer steps (None when the data is not resolved), at most how many tokens one step trains
    on, and the geometry's warnings: the same arithmetic the stage runs with."""
    from posttrain.stages.registry import stage_kind
    geo = stage_kind(stage.kind).geometry(stage, gpus)
    return geo.steps(rows, stage.num_epochs, stage.max_steps), geo.tokens_per_step, geo.warnings


def preflight(stage_name: str, stage, model_name: str, gpus: int, zero: int, gpu_gb: float,
              others_gb: float = 0.0) -> str | None:
    """A warning when a stage's estimate passes the GPU's memory, said before the model loads: on
    2026-12-07 the 7B SFT throughput recipe (one GPU, no checkpointing, estimate 119.5 GB) loaded a
    random 7B on an 80 GB H100 and ran out of memory after its first step. Only a warning: the estimate
    errs high (119.5 GB against the 107.6 GB peak measured for that stage on an H200), and a run that
    fits must not be refused on it.

    >>> from posttrain.recipe import SFTStage
    >>> st = SFTStage(kind="sft", max_length=8192, batch_tokens=32768, micro_batch_size=1, packing=True,
    ...               gradient_checkpointing=False)  # benchmarks/recipes/olmo-hybrid-7b-throughput.yaml
    >>> preflight("sft", st, "random:olmo-hybrid-7b", 1, 0, 141.0) is None
    True
    >>> print(preflight("sft", st, "random:olmo-hybrid-7b", 1, 0, 79.2))  # doctest: +ELLIPSIS
    sft: the memory estimate is 119.5 GB per GPU (weights, gradients and optimizer 83.0, activations 31.9, ...

    others_gb: memory other processes already hold on this GPU when the stage starts, such as async RL's
    `vllm serve` on the training GPU (0.4 of an H200 is ~56 GB); the stage has only the rest.

    >>> print(preflight("sft", st, "random:olmo-hybrid-7b", 1, 0, 141.0, others_gb=56.0))  # doctest: +ELLIPSIS
    sft: the memory estimate is 119.5 GB per GPU ... of 141.0 GB, 56.0 of them held by other processes ...
    """
    config, guessed = model_config(model_name)
    if guessed:  # a config assumed offline: no warning on a guess
        return None
    m = stage_estimate(config, stage, gpus, zero, gpu_gb)
    if m.total_gb <= gpu_gb - others_gb:
        return None
    held = f", {others_gb:.1f} of them held by other processes (a vLLM server?)," if others_gb >= 0.5 else ""
    return (f"{stage_name}: the memory estimate is {m.total_gb:.1f} GB per GPU (weights, gradients and optimizer "
            f"{m.weights_gb + m.grads_gb + m.optimizer_gb:.1f}, activations {m.activations_gb:.1f}, logits "
            f"{m.logits_gb:.1f}, rollout engine {m.rollout_engine_gb:.1f}) on {gpus} GPU(s) of {gpu_gb:.1f} GB{held} with "
            f"ZeRO-{zero}: expect an out-of-memory error; more GPUs with ZeRO-3, gradient_checkpointing or a "
            f"smaller batch_tokens / micro-batch bring it down (`posttrain run RECIPE --dry-run --gpus N "
            f"--gpu-gb {gpu_gb:.0f}` prints the estimate)")
