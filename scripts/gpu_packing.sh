#!/usr/bin/env bash
# GPU job for exact packing: bf16 parity tests with the fla kernels, then the SFT throughput
# benchmark (padded vs packed vs stock, T=4K and 16K) with a profile of one packed step.
#
# On the GPU machine, after staging the `train` wheels into /tmp/site (shared/device/README.md),
# from the repo root:   bash scripts/gpu_packing.sh [test|bench|all|fused]
# `fused`: the fused-layers parity test, then packed vs packed+fused (fla RMSNorm/SwiGLU) on the 7B's
# widths (8 layers) at 8K, each profiled (model.fused_layers; posttrain/model/fused.py).
# Logs and JSON go to $OUT (the device tool brings them back), else benchmarks/results.
# The first fla call compiles and autotunes for minutes; `test` then `bench` on one warm
# machine reuses the Triton cache.
set -euo pipefail
what=${1:-all}
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"

python3 - <<'PY' | tee "$out/kernel_report.json"
import json
from posttrain.model.kernels import kernel_report
print(json.dumps(kernel_report(), indent=1))
PY

rc=0  # a failing test must not skip the benchmark in `all`
if [[ $what == test || $what == all ]]; then
  python3 -m pytest tests/gpu/test_packing_gpu.py -m gpu -q -s -p no:cacheprovider 2>&1 \
    | tee "$out/gpu_packing_tests.log" || rc=$?
fi
if [[ $what == bench || $what == all ]]; then
  python3 benchmarks/packing.py --profile --out "$out/packing.json" 2>&1 | tee "$out/packing_bench.log" || rc=$?
fi
if [[ $what == fused ]]; then
  python3 -m pytest tests/gpu/test_fused_layers.py -m gpu -q -s -p no:cacheprovider 2>&1 \
    | tee "$out/gpu_fused_tests.log" || rc=$?
  python3 benchmarks/packing.py --size 7b-8l --modes packed fused --seq-lens 8192 --profile \
    --out "$out/fused_layers.json" 2>&1 | tee "$out/fused_layers_bench.log" || rc=$?
fi
exit $rc
