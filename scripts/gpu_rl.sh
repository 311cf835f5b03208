#!/usr/bin/env bash
# GPU job for RL: the weight-sync test (tests/gpu/test_rl_vllm.py) and the rollout benchmark
# (benchmarks/rollout.py: vLLM vs HF generate on a ~1B hybrid at the RL batch).
# Needs `../shared/device/stage-wheels.sh train vllm` installed into /tmp/site (see scripts/gpu_export.sh).
set -uo pipefail
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python3 -m pytest tests/gpu/test_rl_vllm.py -m gpu -q -s -p no:cacheprovider -rs 2>&1 | tee "$out/gpu_rl_tests.log"
python3 benchmarks/rollout.py --out "$out/rollout.json" 2>&1 | tee "$out/rollout.log"
