#!/usr/bin/env bash
# GPU job for async RL (issue 21) on one H200: the RL stage's trainer on the random ~1.36B Olmo
# Hybrid, 64 prompts x 8 rollouts, synchronous colocated vs async with `vllm serve` in its own
# process on the same GPU (CUDA-IPC weight transfer), on long-tailed per-request lengths
# (log-normal, mean 2048, cap 16384) and on a fixed 512. benchmarks/async_rl.py says what is measured.
#
#   bash scripts/gpu_async_rl.sh ROW     ROW: smoke sync_lognormal async1_lognormal async2_lognormal
#                                             sync_fixed512 async1_fixed512 (one device call each)
# `smoke` first on a new machine (~5 min): both modes on 16 prompts x 4 at short lengths, same model and
# micro-batch, so the path is proven and the kernel caches (Triton, tilelang, vLLM's) are warm for the
# timed rows that follow on the same machine. Each row's log, server log and per-step metrics are
# written as it goes (a row cut at the call's limit leaves them); every 120 s the benchmark dumps its
# Python stacks into the log, so a silent phase says where it is.
#
# Needs vLLM 0.26 + transformers (sets `train vllm`) in /tmp/site, staged as scripts/gpu_export.sh
# says; aiohttp and requests must import (checked first). vLLM's IPC weight-transfer module imports
# ray, which the sets do not carry: engines._ipc_engine covers that import (ray is used only for its
# ray send mode). The server runs in its own process, so posttrain's vLLM plugin (GDN conv loader
# fix) must load there too: posttrain is not pip-installed on the GPU machine, so a sitecustomize
# on PYTHONPATH registers it in every Python process vLLM starts.
# Memory split: the server takes SERVER_MEM (0.4) of the GPU, the trainer the rest; sync colocated
# vLLM takes VLLM_MEM (0.35). The trainer's micro-batch is 8 rows (one group) padded to the longest
# completion (up to 16K): if it runs out of memory, rerun with LENGTHS=lognormal:2048:8192 and say so.
# Budget (30 device-min, 10 per call): one row per call, in the order above. Each row stops itself
# before BUDGET_S (540 s from its start) and reports its steady steps; STEPS / ASTEPS cap them.
set -uo pipefail
what=${1:?row: smoke sync_lognormal async1_lognormal async2_lognormal sync_fixed512 async1_fixed512}
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
site=$(mktemp -d)
printf 'try:\n    import posttrain.vllm_plugin as _p\n    _p.register()\nexcept Exception as e:\n    print("posttrain vllm plugin:", e)\n' > "$site/sitecustomize.py"
export PYTHONPATH=$site:/tmp/site:$PWD
out=${OUT:-benchmarks/results}
mkdir -p "$out"
# Fail in seconds, not after minutes of compiling: what `vllm serve` and the IPC transfer import
# (2026-12-01 the server died at start on ray, then on prometheus_fastapi_instrumentator).
python3 -c "import aiohttp, requests, vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)
import posttrain.vllm_plugin as p; p.register()
import vllm.entrypoints.openai.api_server, vllm.entrypoints.serve.instrumentator.metrics
from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferEngine" \
  || { echo "missing packages (see the header)"; exit 1; }
LN=${LENGTHS:-lognormal:2048:16384}
run() {  # name, args...   (RB: this row's budget in seconds, default BUDGET_S or 540)
  local name=$1; shift
  local budget=${RB:-${BUDGET_S:-540}}
  # --time-budget ends the run with a JSON before the call's limit (the timeout kills it without one)
  timeout $((budget + 45)) python3 benchmarks/async_rl.py "$@" --time-budget "$budget" --out "$out/async_rl_$name.json" \
      > "$out/async_rl_$name.full.log" 2>&1
  tail -n 80 "$out/async_rl_$name.full.log" > "$out/async_rl_$name.log"
  echo "$name rc=${PIPESTATUS[0]}"; grep -E '"(completion_tokens_per_s|wall_s_per_step|blocked_on_rollouts_frac|kl_k3|logprob_gap_abs)"' "$out/async_rl_$name.log"
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tail -1
}
case $what in
  smoke)  # 16 x 4 completions a step, log-normal mean 256 cap 2048
    RB=200 run smoke_sync --mode sync --lengths lognormal:256:2048 --prompts 16 --rollouts 4 --steps 3 --vllm-mem ${VLLM_MEM:-0.35}
    RB=240 run smoke_async --mode async --async-steps 1 --lengths lognormal:256:2048 --prompts 16 --rollouts 4 --steps 4 --server-mem ${SERVER_MEM:-0.4} ;;
  sync_lognormal)   run $what --mode sync --lengths "$LN" --steps ${STEPS:-8} --vllm-mem ${VLLM_MEM:-0.35} ;;
  async2_lognormal) run $what --mode async --async-steps 2 --lengths "$LN" --steps ${ASTEPS:-12} --server-mem ${SERVER_MEM:-0.4} ;;
  async1_lognormal) run $what --mode async --async-steps 1 --lengths "$LN" --steps ${ASTEPS:-12} --server-mem ${SERVER_MEM:-0.4} ;;
  sync_fixed512)    run $what --mode sync --lengths fixed:512 --steps ${STEPS:-12} --vllm-mem ${VLLM_MEM:-0.35} ;;
  async1_fixed512)  run $what --mode async --async-steps 1 --lengths fixed:512 --steps ${ASTEPS:-12} --server-mem ${SERVER_MEM:-0.4} ;;
  *) echo "unknown row $what"; exit 2 ;;
esac
