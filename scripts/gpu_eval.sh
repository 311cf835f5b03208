#!/usr/bin/env bash
# GPU job for benchmark suites: the Think suite (offline fixture shards) through lm-eval's vLLM
# backend on a 1B-class random Olmo Hybrid export (tests/gpu/test_suite_vllm.py); the wall time
# lands in $OUT/suite_vllm.json for benchmarks/RESULTS.md.
#
# Needs vLLM, transformers 5.23 and lm-eval in /tmp/site, staged as for scripts/gpu_export.sh
# (../shared/device/stage-wheels.sh train vllm eval: 5 calls).
# Time (H200, 2026-12-01): one vLLM engine serves both seeds: 44 s to start, then ~90 s of GDN
# Triton compiles in its first generate; with the 1.1B export built first, budget ~6 minutes.
set -euo pipefail
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python3 -m pytest tests/gpu/test_suite_vllm.py -m gpu -q -s -p no:cacheprovider -rs 2>&1 | tee "$out/gpu_suite_tests.log"
exit "${PIPESTATUS[0]}"
