"""Throughput and MFU arithmetic, and the metrics.jsonl writer every stage shares.

MFU uses the explicit FLOP count of posttrain.model.flops (matmuls, causal attention cut at
document boundaries, the GDN recurrence, the conv), the same count the benchmarks use.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from posttrain.launch import is_main_process
from posttrain.memory import GB
from posttrain.model.flops import device_peak_flops, mfu

log = logging.getLogger("posttrain")


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token, counted as for one document of seq_len tokens (posttrain.model.flops)."""
    from posttrain.model.flops import train_flops
    return train_flops(config, [seq_len]) / seq_len


def gpu_memory(torch_cuda=None) -> dict[str, float]:
    """This process's GPU memory since the last call, in GB (posttrain.memory.GB: 2^30 bytes, as torch
    and nvidia-smi count and as the dry run estimates); {} without CUDA.
    `peak_allocated` is torch's caching allocator (the trainer: weights, states, activations);
    `device_used` is the whole device now (also vLLM's pools, NCCL buffers, other processes), the
    figure to hold against the card and the dry run's estimate."""
    if torch_cuda is None:
        import torch
        torch_cuda = torch.cuda
    if not torch_cuda.is_available():
        return {}
    peak = torch_cuda.max_memory_allocated()
    torch_cuda.reset_peak_memory_stats()  # each logging interval gets its own peak
    free, total = torch_cuda.mem_get_info()
    return {"mem/peak_allocated_gb": round(peak / GB, 2), "mem/device_used_gb": round((total - free) / GB, 2)}


class MetricsWriter:
    """Appends one JSON object per line; a resumed stage appends after what it had."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if not is_main_process():  # one writer under a distributed launch
            return
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
        self.writer, self.stage, self.n_devices, self.config = writer, stage, n_devices, config
        self.fpt = flops_per_token(config, seq_len)
        # Attention FLOPs grow with the document, not the row: a stage that knows its documents' mean
        # length sets this (logs -> tokens), else MFU credits every token a max-length context.
        self.doc_len = None
        self.peak = device_peak_flops()
        self._t, self._tokens = None, None
        self._first_step_t = None  # the first optimizer step in this process: where kernels compile

    def on_train_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        if self._first_step_t is None:
            self._first_step_t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self._first_step_t is None or self._first_step_t < 0:
            return
        from posttrain.model.compile_cache import cache_state
        dt, cache = time.perf_counter() - self._first_step_t, cache_state()
        self._first_step_t = -1.0
        if is_main_process():
            log.info("%s: first step %.1f s (kernel cache %s)", self.stage, dt, cache.get("state", "n/a"))
            self.writer.write({"stage": self.stage, "step": state.global_step, "first_step_s": round(dt, 2),
                               **({"kernel_cache": cache["state"]} if cache else {})})

    def on_log(self, args, state, control, logs=None, **kw):
        if not is_main_process() or not logs:
            return
        rec = {"stage": self.stage, "step": state.global_step, **{k: v for k, v in logs.items()
                                                                     if isinstance(v, (int, float))}}
        now, tokens = time.perf_counter(), logs.get("num_tokens")
        if tokens is not None and self._tokens is not None and now > self._t and tokens > self._tokens:
            tps = (tokens - self._tokens) / (now - self._t)
            rec["tokens_per_s"] = round(tps, 1)
            fpt = self.fpt
            if self.doc_len is not None:
                rec["mfu_doc_len"] = round(self.doc_len(logs), 1)
                fpt = flops_per_token(self.config, max(1, int(rec["mfu_doc_len"])))
            m = mfu(tps / self.n_devices * fpt, 1.0, self.peak)  # one device's work against its peak
            if m is not None:
                rec["mfu"] = round(m, 4)
        if tokens is not None:
            self._t, self._tokens = now, tokens
        rec.update(gpu_memory())
        self.writer.write(rec)
