"""Throughput and MFU arithmetic, and the metrics.jsonl writer every stage shares.

MFU uses an explicit FLOP count per trained token: 6 x (matmul parameters) for forward +
backward, plus the attention score/value products (12 x layers_attn x T_ctx x d_attn per
token, causal halves it) and the GDN chunked-recurrence term, which is linear in T.
The embedding lookup is not a matmul and is excluded; the LM head is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

# Peak dense bf16 matmul rate we compare against (measured on the GPU machine's H100s).
H100_BF16_PEAK = 798e12


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token of an OlmoHybrid config at context seq_len.

    >>> from transformers import OlmoHybridConfig
    >>> c = OlmoHybridConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=4,
    ...     num_attention_heads=2, linear_key_head_dim=4, linear_value_head_dim=8,
    ...     pad_token_id=None, eos_token_id=None)
    >>> round(flops_per_token(c, 1))  # derived by hand in tests/test_metrics.py
    23376
    """
    d, ff, v = config.hidden_size, config.intermediate_size, config.vocab_size
    types = config.layer_types
    n_attn = sum(t == "full_attention" for t in types)
    n_gdn = len(types) - n_attn
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    attn_params = d * (q + 2 * kv) + q * d
    kd = config.linear_num_key_heads * config.linear_key_head_dim
    vd = config.linear_num_value_heads * config.linear_value_head_dim
    h = config.linear_num_value_heads
    gdn_params = d * (2 * kd + 2 * vd + 2 * h) + vd * d  # q,k,v,g,a,b in; o out
    mlp_params = 3 * d * ff
    matmul_params = n_attn * attn_params + n_gdn * gdn_params + len(types) * mlp_params + d * v
    dense = 6 * matmul_params
    # causal attention: QK^T and PV, each 2*T*q flops/token forward, halved by causality, x3 for fwd+bwd
    attn = n_attn * 3 * 2 * 2 * q * seq_len / 2
    # GDN: state update and readout ~ 4 * K * V per head per token forward (chunked form ~ same order)
    gdn = n_gdn * 3 * 4 * h * config.linear_key_head_dim * config.linear_value_head_dim
    return float(dense + attn + gdn)


def mfu(tokens_per_s: float, fpt: float, peak: float | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1].

    >>> mfu(1000.0, 6e9, 798e12)
    0.007518796992481203
    """
    if not peak:
        return None
    return tokens_per_s * fpt / (peak * n_devices)


def device_peak_flops() -> float | None:
    import torch
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return H100_BF16_PEAK if ("H100" in name or "H200" in name) else None
    return None


class MetricsWriter:
    """Appends one JSON object per line; a resumed stage appends after what it had."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def read_metrics(path: Path) -> list[dict]:
    p = Path(path)
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


class ThroughputCallback(TrainerCallback):
    """Logs every trainer log event to metrics.jsonl, adding tokens/s and MFU.

    Token counts come from the trainer's own `num_tokens` (real tokens, padding excluded when
    the collator reports them), so throughput means work done, not work padded.
    """

    def __init__(self, writer: MetricsWriter, stage: str, config, seq_len: int, n_devices: int = 1):
        self.writer, self.stage, self.n_devices = writer, stage, n_devices
        self.fpt = flops_per_token(config, seq_len)
        self.peak = device_peak_flops()
        self._t, self._tokens = None, None

    def on_train_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        rec = {"stage": self.stage, "step": state.global_step, **{k: v for k, v in logs.items()
                                                                     if isinstance(v, (int, float))}}
        now, tokens = time.perf_counter(), logs.get("num_tokens")
        if tokens is not None and self._tokens is not None and now > self._t and tokens > self._tokens:
            tps = (tokens - self._tokens) / (now - self._t)
            rec["tokens_per_s"] = round(tps, 1)
            m = mfu(tps / self.n_devices, self.fpt, self.peak)
            if m is not None:
                rec["mfu"] = round(m, 4)
        if tokens is not None:
            self._t, self._tokens = now, tokens
        self.writer.write(rec)
