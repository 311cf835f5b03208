"""The FLOP count (MFU in benchmarks and in training logs) against hand counts of one-layer configs."""

from __future__ import annotations

import pytest
from transformers import OlmoHybridConfig

from posttrain.model import flops


def one_layer(kind: str) -> OlmoHybridConfig:
    c = OlmoHybridConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         layer_types=["linear_attention", "full_attention"], num_attention_heads=2,
                         num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=2,
                         linear_key_head_dim=4, linear_value_head_dim=8, pad_token_id=None,
                         eos_token_id=None, bos_token_id=None)
    # The config insists on both layer kinds; the count only reads these two fields.
    c.num_hidden_layers, c.layer_types = 1, [kind]
    return c


def test_attention_layer_hand_count():
    c = one_layer("full_attention")
    # per token: q,k,v,o 4*8*8 = 256 params, MLP 3*8*16 = 384, head 8*10 = 80 -> 2*720 = 1440
    # attention over 3 tokens: QK^T and PV, 2*2*8 flops per (query, key) pair, 1+2+3 = 6 pairs -> 192
    assert flops.train_flops(c, [3]) == 3 * (1440 * 3 + 192)
    assert flops.forward_flops(c, 3)["attention"] == 192


def test_gdn_layer_hand_count():
    c = one_layer("linear_attention")
    # q,k 2*8*8 + v,g 2*8*16 + a,b 2*8*2 + o 16*8 = 544 params; MLP 384, head 80 -> 2*1008 = 2016
    # recurrence 6*K*V*heads = 6*4*8*2 = 384; conv 2*4*(8+8+16) = 256  -> 2656 a token
    assert flops.train_flops(c, [5]) == 3 * 2656 * 5
    assert flops.forward_flops(c, 5)["gdn"] == 384 * 5


def test_attention_grows_with_document_length_and_stops_at_boundaries():
    c = one_layer("full_attention")
    per_token = [flops.forward_flops(c, n)["attention"] / n for n in (1024, 2048, 4096)]
    assert per_token[1] == pytest.approx(2 * per_token[0], rel=1e-3)
    assert per_token[2] == pytest.approx(2 * per_token[1], rel=1e-3)
    # two packed documents do less attention work than one document of their joint length
    assert flops.train_flops(c, [1000, 1000]) < flops.train_flops(c, [2000])
    linear = {k: v for k, v in flops.forward_flops(c, 2000).items() if k != "attention"}
    assert all(v == 2 * flops.forward_flops(c, 1000)[k] for k, v in linear.items())


def test_mfu():
    assert flops.mfu(798e12, 1.0) == 1.0
    assert flops.mfu(399e12, 2.0) == 0.25
    assert flops.mfu(1e12, 1.0, None) is None


def test_h100_and_h200_share_the_peak_and_unknown_devices_get_no_mfu():
    names = ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "cpu"]
    assert [flops.device_peak_flops(n) for n in names] == [798e12, 798e12, 798e12, None, None]


def test_logged_flops_per_token_is_the_per_document_count():
    """The trainer log's per-token figure is the same count, per token of a max-length document."""
    from posttrain.metrics import flops_per_token
    c = one_layer("full_attention")
    assert flops_per_token(c, 100) == pytest.approx(flops.train_flops(c, [100]) / 100)


def test_throughput_callback_tokens_per_s_and_mfu_at_the_documents_length(tmp_path, monkeypatch):
    """tokens/s from the trainer's num_tokens between two logs; MFU credits attention at the
    documents' mean length when the stage says it, at the row length otherwise."""
    from types import SimpleNamespace

    import posttrain.metrics as metrics
    from posttrain.model.tiny import build_tiny_model
    cfg = build_tiny_model().config
    clock = iter([10.0, 12.0, 14.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    cb = metrics.ThroughputCallback(metrics.MetricsWriter(tmp_path / "m.jsonl"), "sft", cfg, seq_len=1024, n_devices=2)
    cb.peak = 1e12
    cb.doc_len = lambda logs: 100
    state = SimpleNamespace(is_world_process_zero=True, global_step=1)
    cb.on_train_begin(None, state, None)
    cb.on_log(None, state, None, logs={"loss": 1.0, "num_tokens": 4000.0})  # t = 12 s: the first step, a baseline
    cb.on_log(None, state, None, logs={"loss": 1.0, "num_tokens": 8000.0})  # t = 14 s: 4,000 tokens in 2 s
    rec = metrics.read_metrics(tmp_path / "m.jsonl")[-1]
    assert rec["tokens_per_s"] == 2000.0 and rec["mfu_doc_len"] == 100.0
    per_gpu = 1000.0  # 2 GPUs
    assert rec["mfu"] == round(per_gpu * flops.train_flops(cfg, [100]) / 100 / 1e12, 4)
    assert flops.train_flops(cfg, [100]) / 100 < flops.train_flops(cfg, [1024]) / 1024  # the row length would overstate it


def test_gpu_memory_is_per_interval_peak_and_whole_device_use():
    """The peak is torch's since the last log (then reset); device use is total minus free, so it
    also counts what torch does not allocate (a colocated vLLM's pools, NCCL buffers)."""
    from types import SimpleNamespace

    from posttrain.metrics import gpu_memory
    state = {"peak": 30e9, "resets": 0}

    def reset():
        state["peak"], state["resets"] = 0.0, state["resets"] + 1
    cuda = SimpleNamespace(is_available=lambda: True, max_memory_allocated=lambda: state["peak"],
                           reset_peak_memory_stats=reset, mem_get_info=lambda: (41e9, 141e9))
    from posttrain.memory import GB
    assert gpu_memory(cuda) == {"mem/peak_allocated_gb": round(30e9 / GB, 2), "mem/device_used_gb": round(100e9 / GB, 2)}
    assert state["resets"] == 1 and gpu_memory(cuda)["mem/peak_allocated_gb"] == 0.0
    assert gpu_memory(SimpleNamespace(is_available=lambda: False)) == {}
