#!/usr/bin/env bash
# GPU job for multi-GPU (nvidia-h200-x2): the ZeRO-3 parity test on 2 GPUs with nccl and the fla kernels.
# Needs `../shared/device/stage-wheels.sh train deepspeed` installed into /tmp/site (../shared/device/README.md).
# Keep NVLink multicast off (the machine sets NCCL_NVLS_ENABLE=0; do not override it).
set -uo pipefail
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python3 -m pytest tests/test_zero3.py -m gpu -q -s -p no:cacheprovider -rs 2>&1 | tee "$out/gpu_zero3_tests.log"
