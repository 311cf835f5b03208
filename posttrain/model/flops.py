"""Explicit model FLOPs of an OlmoHybrid config, counted per document.

Training = 3 x forward (the backward pass does two matmuls per forward matmul). Forward, per
token of a document of length L:
- every projection and the MLP: 2 x (matmul parameters); the LM head: 2 x hidden x vocab;
  the embedding lookup is not a matmul and is left out;
- attention layers, causal and cut at document boundaries: token t (1-based) scores t keys and
  mixes t values: 2 x 2 x t x (heads x head_dim); summed over the document that is
  2 x heads x head_dim x L x (L + 1);
- GDN layers, the recurrence's own work (not the chunked algorithm's extra intra-chunk
  products, which a faster kernel would not count): per value head three K x V products a
  token (read S^T k, the rank-1 update, read S^T q): 6 x K x V;
- the short depthwise conv: 2 x kernel x conv channels.
Norms, gates and activations are elementwise and left out. Counting per document means padded,
packed and leaky runs of the same documents are credited the same useful work.
"""

from __future__ import annotations

from collections.abc import Iterable


def _dims(c):
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kd = c.linear_num_key_heads * c.linear_key_head_dim
    vd = c.linear_num_value_heads * c.linear_value_head_dim
    return hd, kd, vd


def matmul_params(config) -> dict[str, int]:
    """Matmul parameters per layer kind, and of the LM head."""
    h = config.hidden_size
    hd, kd, vd = _dims(config)
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return {
        "attention": h * (q + 2 * kv) + q * h,
        # q, k, v, g, a, b in; o out
        "gdn": h * (2 * kd + 2 * vd + 2 * config.linear_num_value_heads) + vd * h,
        "mlp": 3 * h * config.intermediate_size,
        "lm_head": h * config.vocab_size,
    }


def forward_flops(config, length: int) -> dict[str, float]:
    """Forward FLOPs of one document of `length` tokens, by term."""
    types = config.layer_types
    n_attn = sum(t == "full_attention" for t in types)
    n_gdn = len(types) - n_attn
    hd, kd, vd = _dims(config)
    p = matmul_params(config)
    L = length
    return {
        "dense": 2.0 * L * (n_attn * p["attention"] + n_gdn * p["gdn"] + len(types) * p["mlp"]),
        "lm_head": 2.0 * L * p["lm_head"],
        "attention": n_attn * 2.0 * config.num_attention_heads * hd * L * (L + 1),
        "gdn": n_gdn * 6.0 * L * config.linear_num_value_heads * config.linear_key_head_dim
        * config.linear_value_head_dim,
        "conv": n_gdn * 2.0 * L * config.linear_conv_kernel_dim * (2 * kd + vd),
    }


def train_flops(config, lengths: Iterable[int]) -> float:
    """Forward + backward FLOPs of a step over documents of these lengths."""
    return 3.0 * sum(sum(forward_flops(config, n).values()) for n in lengths)


# Dense bf16 matmul rate (FLOP/s) MFU is measured against, by device. 798 TFLOP/s is what a large
# bf16 matmul reaches on the GPU machine's H100s (benchmarks/RESULTS.md), below the 989 datasheet
# figure. An H200 is the same GH100 chip with more and faster HBM: the same tensor cores, the same peak.
PEAK_BF16_FLOPS = {"H100": 798e12, "H200": 798e12}
REFERENCE_PEAK = PEAK_BF16_FLOPS["H100"]


def device_peak_flops(device_name: str | None = None) -> float | None:
    """The bf16 peak of a device by its name (default: this process's CUDA device); None when it is
    not one we have measured (CPU, other GPUs): then no MFU is reported rather than a wrong one.

    >>> device_peak_flops("NVIDIA H200"), device_peak_flops("NVIDIA H100 80GB HBM3"), device_peak_flops("cpu")
    (798000000000000.0, 798000000000000.0, None)
    """
    if device_name is None:
        import torch
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    return next((peak for chip, peak in PEAK_BF16_FLOPS.items() if chip in device_name), None)


def mfu(flops: float, seconds: float, peak: float | None = REFERENCE_PEAK) -> float | None:
    """Model FLOPs utilisation: `flops` done in `seconds` as a fraction of `peak` FLOP/s (one device's
    work against one device's peak); None without a peak.

    >>> mfu(6e12, 1.0, 798e12)
    0.007518796992481203
    """
    if not peak:
        return None
    return flops / seconds / peak
