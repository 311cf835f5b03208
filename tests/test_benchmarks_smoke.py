"""The GPU benchmarks' own code paths, shrunk to the CPU: they must run and their arithmetic hold."""

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_dpo_benchmark_smoke(tmp_path):
    import dpo
    out = dpo.main(["--size", "tiny", "--device", "cpu", "--seq-len", "512", "--rows", "1", "--steps", "1",
                    "--warmup", "0", "--out", str(tmp_path / "dpo.json")])
    r = {x["mode"]: x for x in out["results"]}
    assert set(r) == {"padded-live", "padded-cache", "packed-live", "packed-cache"}
    assert all(math.isfinite(x["loss"]) and x["real_tokens_per_s"] > 0 for x in r.values())
    # packed rows carry less padding than TRL's padded layout of the same pairs budget
    assert r["packed-cache"]["real_fraction"] > r["padded-cache"]["real_fraction"]
    assert (tmp_path / "dpo.json").is_file()


def test_pair_micro_batches_respect_the_budget():
    import dpo
    pairs = dpo.sample_pairs(50, 1024, vocab=100)
    for packed in (True, False):
        for g in dpo.micro_batches(pairs, 1024, packed):
            if packed:
                assert len(g) == 1 or sum(dpo.pair_tokens(pairs[i]) for i in g) <= 1024
            else:
                longest = max(len(pairs[i]["prompt_ids"]) + max(len(pairs[i]["chosen_ids"]), len(pairs[i]["rejected_ids"]))
                              for i in g)
                assert len(g) == 1 or 2 * len(g) * longest <= 1024


def test_packing_benchmark_smoke_with_fused_layers(tmp_path):
    """On CPU the fused forwards hand back to the stock code (fla needs CUDA): same path, a ratio near 1."""
    import packing
    out = packing.main(["--size", "tiny", "--device", "cpu", "--seq-lens", "256", "--modes", "packed", "fused",
                        "head", "--steps", "1", "--warmup", "0", "--docs", "40", "--out", str(tmp_path / "p.json")])
    r = {x["mode"]: x for x in out["results"]}
    assert set(r) == {"packed", "fused", "head"} and all(math.isfinite(x["loss"]) for x in r.values())
    # the chunked LM head computes the same loss as the stock head (the weights moved one step since: close)
    assert abs(r["head"]["loss"] - r["fused"]["loss"]) < 0.05 * r["fused"]["loss"]
    assert set(out["ratios"]) == {"fused/packed T=256", "head/fused T=256"} and out["ratios"]["fused/packed T=256"] > 0
    assert packing.ratios([{"mode": "padded", "seq_len": 4, "real_tokens_per_s": 50.0},
                           {"mode": "packed", "seq_len": 4, "real_tokens_per_s": 100.0}]) == {"packed/padded T=4": 2.0}


def test_stage_metrics_drops_warmup_means_the_rest_and_takes_the_worst_memory(tmp_path):
    import json

    import stage_metrics
    recs = [{"step": 1, "tokens_per_s": 10.0, "mem/peak_allocated_gb": 90.0},   # compile step: left out
            {"step": 2, "tokens_per_s": 900.0, "mem/peak_allocated_gb": 60.0, "time/generation_s": 20.0},
            {"step": 3, "tokens_per_s": 1100.0, "mem/peak_allocated_gb": 70.0, "time/generation_s": 30.0},
            {"step": 3, "train_runtime": 99.0}]                                  # end-of-training record: not a step
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = stage_metrics.main([str(path), "--gpus", "2", "--warmup", "1", "--out", str(tmp_path / "s.json")])
    assert (out["steps_logged"], out["steps_measured"]) == (3, 2)
    assert out["tokens_per_s"] == 1000.0 and out["tokens_per_s_per_gpu"] == 500.0
    assert out["mem_peak_allocated_gb"] == 70.0 and out["time_generation_s"] == 25.0
    assert json.loads((tmp_path / "s.json").read_text())["stage"] == path.parent.name


def test_stage_metrics_finds_a_cut_stage_in_its_attempt_folder(tmp_path):
    import stage_metrics
    attempt = tmp_path / "run" / ".work" / "rl-abc"
    attempt.mkdir(parents=True)
    (attempt / "metrics.jsonl").write_text(json.dumps({"step": 1, "tokens_per_s": 5.0}) + "\n")
    out = stage_metrics.main(["--run", str(tmp_path / "run"), "--stage", "rl", "--gpus", "1", "--warmup", "0",
                              "--out", str(tmp_path / "o" / "2x_rl.json")])
    assert out["tokens_per_s"] == 5.0 and out["stage"] == "rl-abc"
    assert (tmp_path / "o" / "2x_rl_metrics.jsonl").is_file()  # the per-step log comes back beside the JSON
    with pytest.raises(SystemExit, match="no metrics.jsonl for stage 'sft'"):
        stage_metrics.find_metrics(tmp_path / "run", "sft")


def test_async_rl_benchmark_lengths_and_smoke(tmp_path):
    """Long-tailed lengths: mean ~2K after the 16K cap, the same draw in every mode; both modes
    run on the HF engine and report throughput, blocked share and staleness."""
    import async_rl
    f = async_rl.length_fn("lognormal:2048:16384")
    xs = [f(i, j) for i in range(4000) for j in range(8)]
    assert 1900 < sum(xs) / len(xs) < 2150 and max(xs) == 16384 and sorted(xs)[len(xs) // 2] < 1400
    assert f(5, 3) == async_rl.length_fn("lognormal:2048:16384")(5, 3)
    small = ["--steps", "3", "--prompts", "2", "--rollouts", "4", "--micro-batch", "4", "--lengths", "lognormal:6:12"]
    sync = async_rl.main(["--mode", "sync", *small, "--out", str(tmp_path / "s.json")])
    asy = async_rl.main(["--mode", "async", "--async-steps", "1", *small, "--out", str(tmp_path / "a.json")])
    assert sync["completion_tokens_per_s"] > 0 and asy["completion_tokens_per_s"] > 0
    assert asy["async"]["async/staleness_max"] <= 1 and 0 <= asy["blocked_on_rollouts_frac"] <= 1
    assert max(r["completions/max_length"] for r in asy["per_step"]) <= 12
    # 3 steps: sync drops its first; async 1 would drop 2 (step 2 was ordered before training began)
    # but keeps 2 steps to time, and says the rate is not a steady state's
    assert sync["steady_state"] and not asy["steady_state"] and asy["steady_steps"] == 2
    assert asy["logprob_gap_abs"] is not None and asy["is_ratio_max"] <= 2.0  # TIS from the training forward


def test_async_rl_row_that_dies_in_teardown_leaves_its_json(tmp_path, monkeypatch):
    """The JSON is rewritten after every step: on 2026-12-07 a sync row segfaulted after its
    second step and came back with no JSON at all."""
    import async_rl
    calls = []

    def memory():
        calls.append(1)
        if len(calls) > 2:  # the teardown's call, after two steps' reports
            raise RuntimeError("died in teardown")
        return {}
    monkeypatch.setattr(async_rl, "gpu_memory_by_pid", memory)
    out = tmp_path / "s.json"
    with pytest.raises(RuntimeError, match="died in teardown"):
        async_rl.main(["--mode", "sync", "--steps", "2", "--prompts", "2", "--rollouts", "4", "--micro-batch", "4",
                       "--lengths", "lognormal:6:12", "--out", str(out)])
    row = json.loads(out.read_text())
    assert [r["step"] for r in row["per_step"]] == [1, 2] and row["completion_tokens_per_s"] > 0


def test_stack_dumps_name_every_thread(capsys):
    import threading

    import async_rl
    stop, seen = threading.Event(), threading.Event()

    def waiting_here():
        seen.wait(5)
    t = threading.Thread(target=waiting_here)
    t.start()
    async_rl.dump_stacks_every(0.05, stop)
    time.sleep(0.3)
    stop.set()
    seen.set()
    t.join()
    err = capsys.readouterr().err
    assert "--- stacks at" in err and "waiting_here" in err and "test_stack_dumps_name_every_thread" in err


def test_kernel_cache_parts_round_trip_to_the_next_machine(tmp_path):
    """scripts/kernel_cache.sh: SAVE_CACHE=1 tars the caches into $out; kernel-cache/ restores them."""
    import shutil
    import subprocess
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        (d / "scripts").mkdir(parents=True)
        shutil.copy(ROOT / "scripts" / "kernel_cache.sh", d / "scripts")
    script = '. scripts/kernel_cache.sh && echo "$TRITON_CACHE_DIR" && mkdir -p "$TRITON_CACHE_DIR" && ' \
             'echo autotuned > "$TRITON_CACHE_DIR/k.json" && save_cache'
    env = {"PATH": "/usr/bin:/bin", "out": str(first / "out"), "KERNEL_CACHE": str(first / "kc"), "SAVE_CACHE": "1"}
    (first / "out").mkdir()
    r = subprocess.run(["bash", "-c", script], cwd=first, env=env, capture_output=True, text=True, check=True)
    assert r.stdout.splitlines()[0] == str(first / "kc" / "triton")
    parts = sorted((first / "out").glob("kcache.tgz.part-*"))
    assert parts
    (second / "kernel-cache").mkdir()
    for p in parts:
        shutil.copy(p, second / "kernel-cache")
    # a second named set (another machine's, other shapes) sits beside it and is restored too
    third = tmp_path / "third"
    (third / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "kernel_cache.sh", third / "scripts")
    (third / "out").mkdir()
    env = {"PATH": "/usr/bin:/bin", "out": str(third / "out"), "KERNEL_CACHE": str(third / "kc"), "SAVE_CACHE": "1",
           "CACHE_NAME": "kcache-rl"}
    subprocess.run(["bash", "-c", '. scripts/kernel_cache.sh && mkdir -p "$VLLM_CACHE_ROOT" && '
                    'echo graphs > "$VLLM_CACHE_ROOT/g.bin" && save_cache'], cwd=third, env=env, check=True)
    for p in (third / "out").glob("kcache-rl.tgz.part-*"):
        shutil.copy(p, second / "kernel-cache")
    env = {"PATH": "/usr/bin:/bin", "out": str(second / "out"), "KERNEL_CACHE": str(second / "kc")}
    r = subprocess.run(["bash", "-c", ". scripts/kernel_cache.sh && save_cache"], cwd=second, env=env,
                       capture_output=True, text=True, check=True)
    assert "kernel cache kcache restored" in r.stdout and "kernel cache kcache-rl restored" in r.stdout
    assert (second / "kc" / "triton" / "k.json").read_text() == "autotuned\n"
    assert (second / "kc" / "vllm" / "g.bin").read_text() == "graphs\n"
    assert not (second / "out").exists()  # without SAVE_CACHE nothing is written back


def test_kernel_cache_save_leaves_out_the_sets_it_restored(tmp_path):
    """A machine that restored a set and compiled more saves only what it compiled: its set does not
    carry the restored one again."""
    import shutil
    import subprocess
    import tarfile
    for d in ("first", "second"):
        (tmp_path / d / "scripts").mkdir(parents=True)
        (tmp_path / d / "out").mkdir()
        shutil.copy(ROOT / "scripts" / "kernel_cache.sh", tmp_path / d / "scripts")
    env = {"PATH": "/usr/bin:/bin", "out": str(tmp_path / "first" / "out"), "KERNEL_CACHE": str(tmp_path / "kc1"),
           "SAVE_CACHE": "1"}
    subprocess.run(["bash", "-c", '. scripts/kernel_cache.sh && mkdir -p "$TRITON_CACHE_DIR" && '
                    'echo 7b > "$TRITON_CACHE_DIR/old.json" && save_cache'], cwd=tmp_path / "first", env=env, check=True)
    (tmp_path / "second" / "kernel-cache").mkdir()
    for p in (tmp_path / "first" / "out").glob("kcache.tgz.part-*"):
        shutil.copy(p, tmp_path / "second" / "kernel-cache")
    env = {**env, "out": str(tmp_path / "second" / "out"), "KERNEL_CACHE": str(tmp_path / "kc2"), "CACHE_NAME": "kcache-1b"}
    subprocess.run(["bash", "-c", '. scripts/kernel_cache.sh && sleep 1.1 && echo 1b > "$TRITON_CACHE_DIR/new.json" && '
                    'save_cache'], cwd=tmp_path / "second", env=env, check=True, capture_output=True)
    parts = sorted((tmp_path / "second" / "out").glob("kcache-1b.tgz.part-*"))
    (tmp_path / "whole.tgz").write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(tmp_path / "whole.tgz") as t:
        files = [m.name for m in t.getmembers() if m.isfile()]
    assert files == ["./triton/new.json"]


def test_async_rl_benchmark_doctests():
    """The benchmark's pure helpers (engine_stats, pace, ...) carry their examples as doctests, which
    the suite's --doctest-modules does not collect under benchmarks/."""
    import doctest

    import async_rl
    r = doctest.testmod(async_rl)
    assert r.failed == 0 and r.attempted >= 4


def test_detached_job_outlives_its_call_and_returns_its_files(tmp_path):
    """scripts/detach.sh: `start` returns at once and the job runs on without the calling shell;
    `wait` says "still running" (rc 3) until it ends, prints only new log lines, then copies the
    job's $OUT into the waiting call's $OUT."""
    import subprocess
    script = str(ROOT / "scripts" / "detach.sh")
    env = {"PATH": "/usr/bin:/bin", "DETACH_DIR": str(tmp_path / "jobs")}
    # the job reports its session id: the device machine spares only a job in a session of its own
    job = ('echo first sid=$(cut -d" " -f6 /proc/$$/stat); while [ ! -e "$0" ]; do sleep 0.2; done; '
           'echo second; echo figures > "$OUT/row.json"; exit 7')
    gate = tmp_path / "gate"
    r = subprocess.run(["bash", script, "start", "row", "bash", "-c", job, str(gate)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "row started" in r.stdout
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    out1.mkdir(), out2.mkdir()
    r = subprocess.run(["bash", script, "wait", "row", "3"], env={**env, "OUT": str(out1)},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "first" in r.stdout and "still running" in r.stdout
    sid = int(r.stdout.split("sid=")[1].split()[0])
    assert sid != os.getsid(0)
    assert not list(out1.iterdir())
    gate.touch()
    r = subprocess.run(["bash", script, "wait", "row", "20"], env={**env, "OUT": str(out2)},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "second" in r.stdout and "first" not in r.stdout  # only lines the last wait did not print
    assert "ended rc=7" in r.stdout
    assert (out2 / "row.json").read_text() == "figures\n"
    r = subprocess.run(["bash", script, "wait", "gone", "1"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "no job gone" in r.stdout


def test_merged_gdn_projections_are_the_same_function():
    """benchmarks/gdn_projections.py: merging the six GEMMs changes no output or gradient (fp32)."""
    import gdn_projections as gp
    x = torch.randn(32, 64, dtype=torch.float64)
    w = gp.make_weights("tiny", torch.device("cpu"), torch.float64)
    outs = {m: gp.project(m, x, w) for m in gp.MODES}
    for m in gp.MODES:
        assert [o.shape for o in outs[m]] == [o.shape for o in outs["stock"]]
        assert all(torch.allclose(a, b) for a, b in zip(outs[m], outs["stock"]))
        assert outs[m][0].is_contiguous()  # what the short conv reads
    r = gp.main(["--sizes", "tiny", "--seq-lens", "64", "--iters", "1", "--device", "cpu", "--out", "/dev/null"])
    assert [x["mode"] for x in r["rows"]] == list(gp.MODES) and all(x["ms"] > 0 for x in r["rows"])
    assert max(x["max_grad_rel_err"] for x in r["rows"]) < 2e-2  # bf16 GEMMs of other shapes round differently


def test_packing_profile_lists_kernel_groups_and_ops_by_shape(tmp_path):
    import packing
    out = packing.main(["--size", "tiny", "--device", "cpu", "--seq-lens", "128", "--modes", "packed", "--steps", "1",
                        "--warmup", "0", "--docs", "20", "--profile", "--out", str(tmp_path / "p.json")])
    prof = next(r["profile"] for r in out["results"] if "profile" in r)
    assert prof["total_ms"] > 0 and prof["top"] and prof["top_ops"]
    assert abs(sum(prof["groups_ms"].values()) - prof["total_ms"]) < 1e-6 * max(1.0, prof["total_ms"]) + 1e-3
    assert all(op["name"].startswith("aten::") and "shapes" in op for op in prof["top_ops"])
    # one step's phases, each timed by the host; on CPU the device clock is the host's
    assert list(prof["pace"]) == ["forward", "backward", "optimizer"]
    assert all(p["host_ms"] > 0 and p["device_ms"] == p["host_ms"] for p in prof["pace"].values())


def test_gpu_gaps_sums_idle_and_names_the_op_after_each_gap():
    """Kernels at [0,10], [5,12], [40,50], [50,60], [100,110] us: idle 28 + 40 = 68 us of a 110 us span;
    the 40 us gap is before a kernel that aten::mm launched under aten::linear, in `step` (a profiler
    event reusing aten::mm's id is not taken for it)."""
    from types import SimpleNamespace as NS

    from torch.autograd import DeviceType

    from benchmarks.packing import gpu_gaps

    step = NS(id=9, name="step", cpu_parent=None, device_type=DeviceType.CPU, kernels=[])
    linear = NS(id=1, name="aten::linear", cpu_parent=step, device_type=DeviceType.CPU, kernels=[])
    mm = NS(id=3, name="aten::mm", cpu_parent=linear, device_type=DeviceType.CPU, kernels=["k"])
    buffer = NS(id=3, name="Activity Buffer Request", cpu_parent=None, device_type=DeviceType.CPU, kernels=[])
    item = NS(id=4, name="aten::_local_scalar_dense", cpu_parent=None, device_type=DeviceType.CPU, kernels=["k"])

    def kernel(a, b, corr):
        return NS(id=0, name="k", device_type=DeviceType.CUDA, time_range=NS(start=a, end=b),
                  linked_correlation_id=corr)

    events = [step, linear, mm, buffer, item, kernel(0, 10, 4), kernel(5, 12, 4), kernel(40, 50, 4),
              kernel(50, 60, 4), kernel(100, 110, 3)]
    out = gpu_gaps(events, min_us=30)
    assert out["span_ms"] == 0.110 and abs(out["idle_ms"] - 0.068) < 1e-12
    assert out["gaps"] == [{"before": "aten::mm < aten::linear << step", "count": 1, "ms": 0.04}]
    # linked through the runtime call's CUPTI id instead (linked_correlation_id 0)
    launch = NS(id=77, name="cudaLaunchKernel", cpu_parent=mm, device_type=DeviceType.CPU, kernels=[])
    late = NS(id=77, name="k", device_type=DeviceType.CUDA, time_range=NS(start=100, end=110), linked_correlation_id=0)
    out = gpu_gaps(events[:-1] + [launch, late], min_us=30)
    assert out["gaps"] == [{"before": "aten::mm < aten::linear << step", "count": 1, "ms": 0.04}]
