#!/usr/bin/env bash
# GPU job (nvidia-h200-x2, or any N GPUs of one node): one stage of the 7B at throughput, ZeRO-3 over all
# GPUs through accelerate (on one GPU: no DeepSpeed; the 7B's AdamW needs an H200 there), then its
# steady-state figures (benchmarks/stage_metrics.py).
#   bash scripts/gpu_7b.sh sft|dpo|rl [dotlist overrides...]
# STAGE_LIMIT_S stops the stage early (SIGTERM, then the summary of what it logged still runs: the
# device tool's calls end at 600 s); WARMUP is how many logged steps the summary leaves out;
# ZERO=2 uses recipes/accelerate/zero2.yaml instead (no parameter gathers; ~99 GB/GPU for 8K SFT).
# Needs `../shared/device/stage-wheels.sh train deepspeed vllm` installed into /tmp/site
# (../shared/device/README.md). Keep NVLink multicast off (NCCL_NVLS_ENABLE=0).
set -uo pipefail
stage=$1; shift
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
       VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1
out=${OUT:-benchmarks/results}
run=${RUN:-/tmp/bench-7b}
mkdir -p "$out"
n=$(python3 -c 'import torch; print(torch.cuda.device_count())')
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1
if [ "$n" -gt 1 ]; then launch=(python3 -m accelerate.commands.launch --config_file "recipes/accelerate/zero${ZERO:-3}.yaml"
                                 --num_processes "$n"); else launch=(python3); fi  # 1 GPU: no DeepSpeed
timeout -k 15 "${STAGE_LIMIT_S:-0}" "${launch[@]}" -m posttrain run benchmarks/recipes/olmo-hybrid-7b-throughput.yaml --stage "$stage" \
    output_dir="$run" "$@" > "$out/7b_$stage.log" 2>&1
echo "exit $?"
tail -c 6000 "$out/7b_$stage.log"
python3 benchmarks/stage_metrics.py --run "$run" --stage "$stage" --gpus "$n" --warmup "${WARMUP:-2}" \
    --out "$out/7b_$stage.json"
