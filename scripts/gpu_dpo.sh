#!/usr/bin/env bash
# GPU job for DPO: benchmarks/dpo.py (packed vs padded pairs, cached vs live reference, ~1.4B at 16K).
# Needs `../shared/device/stage-wheels.sh train` installed into /tmp/site (../shared/device/README.md).
# The first fla call compiles and autotunes for ~2 minutes (tilelang on Hopper with Triton 3.6).
set -uo pipefail
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python3 benchmarks/dpo.py --seq-len ${T:-16384} --rows ${ROWS:-4} --out "$out/dpo.json" 2>&1 | tee "$out/dpo.log"
