#!/usr/bin/env bash
# GPU job for RL: the weight-sync test, the rollout benchmark (vLLM vs HF generate on a ~1B hybrid at
# the RL batch) and a colocated GRPO step's time split.   bash scripts/gpu_rl.sh [test|rollout|step|all]
# Needs `../shared/device/stage-wheels.sh train vllm` installed into /tmp/site (see scripts/gpu_export.sh).
set -uo pipefail
what=${1:-all}
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
out=${OUT:-benchmarks/results}
mkdir -p "$out"
if [[ $what == test || $what == all ]]; then
  python3 -m pytest tests/gpu/test_rl_vllm.py -m gpu -q -s -p no:cacheprovider -rs 2>&1 | tee "$out/gpu_rl_tests.log"
fi
if [[ $what == rollout || $what == all ]]; then
  python3 benchmarks/rollout.py --new-tokens 256 512 --out "$out/rollout.json" 2>&1 | tee "$out/rollout.log"
fi
if [[ $what == step || $what == all ]]; then
  python3 benchmarks/grpo_step.py --steps ${STEPS:-4} --out "$out/grpo_step.json" 2>&1 | tee "$out/grpo_step.log"
fi
