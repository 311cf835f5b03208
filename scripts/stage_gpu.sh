#!/usr/bin/env bash
# Stage the GPU machine's packages: the shared sets plus posttrain's own (scripts/device-sets/),
# copied beside ../shared/device/stage-wheels.sh, whose sets folder does not keep them between sessions.
#   bash scripts/stage_gpu.sh train vllm eval
set -euo pipefail
sets=../shared/device/sets
for f in scripts/device-sets/*; do cp "$f" "$sets/"; done
# vLLM 0.26's `vllm serve` imports it at start (2026-12-01, async RL server died without it)
grep -q prometheus-fastapi-instrumentator "$sets/vllm" || echo "prometheus-fastapi-instrumentator==8.1.0" >> "$sets/vllm"
exec ../shared/device/stage-wheels.sh "$@"
