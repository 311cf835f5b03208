#!/usr/bin/env bash
# GPU job for exports: a `posttrain export` of a small random Olmo Hybrid served by vLLM 0.26
# through posttrain's vLLM plugin, prompt and decode logprobs against transformers' fp32 ones
# (tests/gpu/test_export_vllm.py); also checks that vLLM still fails without the plugin.
#
# Needs vLLM and transformers 5.23 in /tmp/site. From the repo root on this machine:
#   ../shared/device/stage-wheels.sh train vllm        # prints N (5 calls)
# then on one warm GPU machine, back to back (shared/device/README.md):
#   calls 1..N-1: carry [".gpu-wheels-k"], command  mkdir -p /tmp/gw && cp .gpu-wheels-k/* /tmp/gw/
#   call N:       carry [".gpu-wheels-N"], command  mkdir -p /tmp/gw && cp .gpu-wheels-N/* /tmp/gw/ &&
#                 bash /tmp/gw/install.sh && bash scripts/gpu_export.sh
# Logs go to $OUT (the device tool brings them back), else benchmarks/results.
# Time: three vLLM engines (fp32, bf16, no plugin), each ~10 s to start; the first generate in
# each autotunes vLLM's GDN Triton kernels (about a minute): budget ~5 minutes.
set -euo pipefail
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python3 - <<'PY' | tee "$out/export_versions.txt"
from importlib.metadata import version
import torch
for d in ("torch", "transformers", "vllm", "triton"):
    try:
        print(d, version(d))
    except Exception as e:
        print(d, "missing", e)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY
python3 -m pytest tests/gpu/test_export_vllm.py -m gpu -q -s -p no:cacheprovider -rs 2>&1 | tee "$out/gpu_export_tests.log"
exit "${PIPESTATUS[0]}"
