#!/usr/bin/env bash
# GPU job for issue #10 (nvidia-h200-x8, one node): the 7B runs at the published shapes (rl also on 2+ GPUs).
#   bash scripts/gpu_8x.sh sft   # ZeRO-3 on 8 GPUs, packed 32K rows, grad. checkpointing, 25 steps
#   bash scripts/gpu_8x.sh dpo   # 128 pairs a step, packed 16K rows, cached reference, 6 steps
#   bash scripts/gpu_8x.sh rl    # vLLM server on GPUs 0-3 (data parallel), GRPO training on GPUs 4-7
# rl splits whatever GPUs the node has in halves: on 2 GPUs, the server on GPU 0 and training on GPU 1
# (issue #9's server variant; one training GPU runs without DeepSpeed, as in gpu_7b.sh).
# sft and dpo are scripts/gpu_7b.sh with 8-GPU settings (that path ran on 2 H200s, RESULTS.md).
# rl has not run on GPUs yet: server mode needs posttrain installed (its vllm.general_plugins entry
# point fixes vLLM 0.26's GDN conv loader in every vLLM worker), so it installs it into /tmp/site.
# Needs `../shared/device/stage-wheels.sh train deepspeed vllm` in /tmp/site. NCCL_NVLS_ENABLE=0 stays.
# Each run stops itself at STAGE_LIMIT_S (default 540 s: the device tool's calls end at 600 s) and
# still summarises the steps it logged.
set -uo pipefail
mode=${1:?sft|dpo|rl}
export STAGE_LIMIT_S=${STAGE_LIMIT_S:-540}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
case "$mode" in
  sft) exec bash scripts/gpu_7b.sh sft stages.sft.max_length=32768 stages.sft.batch_tokens=524288 \
         stages.sft.gradient_checkpointing=true stages.sft.max_steps=25 ;;   # 8 GPUs x 2 rows x 32K
  dpo) exec bash scripts/gpu_7b.sh dpo stages.dpo.max_steps=6 ;;
  rl) ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
       VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false
ckpt=/tmp/rand7b run=${RUN:-/tmp/bench-7b-8x}
python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site . || exit 1
# One random 7B on disk for the server and the trainer to start from (vLLM's naming).
python3 - "$ckpt" <<'PY'
import sys
from posttrain.data.templates import TEMPLATES
from posttrain.model.load import load_model, load_tokenizer
tok = load_tokenizer("tiny:100278", TEMPLATES["olmo-think"])
model = load_model("random:olmo-hybrid-7b", "bfloat16", tokenizer=tok)
model.save_pretrained(sys.argv[1], save_original_format=False)
tok.save_pretrained(sys.argv[1])
PY
n=$(python3 -c 'import torch; print(torch.cuda.device_count())'); half=$((n / 2))
serve_gpus=$(seq -s, 0 $((half - 1))); train_gpus=$(seq -s, "$half" $((n - 1)))
if [ $((n - half)) -gt 1 ]; then launch=(python3 -m accelerate.commands.launch
    --config_file recipes/accelerate/zero3.yaml --num_processes $((n - half))); else launch=(python3); fi
CUDA_VISIBLE_DEVICES=$serve_gpus python3 -m trl.scripts.vllm_serve --model "$ckpt" --data_parallel_size "$half" \
    --max_model_len 1024 --gpu_memory_utilization 0.9 > "$out/${n}x_vllm_serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 300); do  # vLLM start, weights load and CUDA graphs: minutes
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/health/", timeout=2)' \
    2>/dev/null && break; sleep 2
done
left=$((STAGE_LIMIT_S - SECONDS))  # the call's time left after the server start
CUDA_VISIBLE_DEVICES=$train_gpus timeout -k 15 "$left" "${launch[@]}" \
    -m posttrain run benchmarks/recipes/olmo-hybrid-7b-throughput.yaml --stage rl \
    output_dir="$run" model.name="$ckpt" model.tokenizer="$ckpt" stages.rl.vllm_mode=server \
    stages.rl.vllm_server_base_url=http://127.0.0.1:8000 stages.rl.max_steps=5 > "$out/${n}x_rl.log" 2>&1
echo "exit $?"; tail -c 6000 "$out/${n}x_rl.log"
python3 benchmarks/stage_metrics.py --run "$run" --stage rl --gpus $((n - half)) --warmup 1 --out "$out/${n}x_rl.json"
