#!/usr/bin/env bash
# GPU job for async RL (issue 21) on one GPU (H200 or H100): the RL stage's trainer on the random ~1.36B Olmo
# Hybrid, PROMPTS (64) prompts x 8 rollouts, synchronous colocated vs async with `vllm serve` in its own
# process on the same GPU (CUDA-IPC weight transfer), on long-tailed per-request lengths
# (log-normal, mean 2048, cap 8192) and on a fixed 512. benchmarks/async_rl.py says what is measured.
#
#   bash scripts/gpu_async_rl.sh ROW     ROW: warm sync_lognormal async1_lognormal async2_lognormal
#                                             async4_slack_lognormal sync_fixed512 async1_fixed512
#                                             (one device call each)
# async4_slack_lognormal: async_steps 4 with LOOKAHEAD (2) steps of orders: a group whose completions
# run long may slip up to 2 steps while finished groups train (rollout/producer.py); its steps 1-3
# train from the fill, so its first steady step is 4.
# async6_slack_lognormal: the same with async_steps 6 (still lookahead 2, so the same fill and first
# steady step). Why 6: a group's completions get N steps from order to deadline. On 2026-12-07 (H100)
# the server ran ~260-310 requests at ~25-30 tokens/s each beside training, so an 8K-capped completion
# takes ~270-330 s, while the engine's ~7.7-8.1K tokens/s makes a 32 x 8 step's ~0.5M tokens in ~63 s:
# 4 steps (~250 s) do not cover the tail, 6 (~380 s) do, and then the engine's rate sets the step.
# open-instruct's default async_steps is 8.
# Ran 2026-12-07 (tenth session, H100): async6 (lookahead 2) 7,395 completion tokens trained/s over its
# two steady steps (56 s each) against sync's 5,744 (4 steps, 83 s): 1.29x; between its orders the
# server drained to 0 running while the trainer ate the fill's backlog, so two steady steps say little
# (benchmarks/RESULTS.md, tenth session). Next, a row long enough for ~8 steady steps and its sync
# baseline, as one detached job over calls (scripts/gpu_async_pair.sh; the machine keeps a setsid job
# between back-to-back calls). kernel-cache/ did not survive into the session of 2026-12-08 (a new
# checkout holds only what landed), so the plan assumes a cold machine: the async row goes first, its
# server's fill overlapping the trainer's compile, and sync then finds every kernel compiled.
#   calls 1-4: carry .gpu-wheels-k, run: mkdir -p /tmp/gw && cp .gpu-wheels-k/* /tmp/gw/
#   call 5 (carry .gpu-wheels-5): mkdir -p /tmp/gw && cp .gpu-wheels-5/* /tmp/gw/ && bash /tmp/gw/install.sh &&
#     export PYTHONPATH=/tmp/site && bash scripts/detach.sh start pair env ASYNC_S=950 SYNC_S=420 \
#     bash scripts/gpu_async_pair.sh && bash scripts/detach.sh wait pair 500
#   calls 6-7: bash scripts/detach.sh wait pair 560   (rc 3: call again; rc 0: $OUT has pair.tgz)
# ~1,600 device-seconds with staging; after failed starts (90 s each) shrink ASYNC_S and SYNC_S.
# Why lookahead 4 (not 2, as run): by Little's law a step finds its 32 groups finished only if ~32 x
# (a group's latency / the step) are in flight. A group ends with the longest of its 8 completions: for
# log-normal mean 2,048 cap 8,192 that is ~5K tokens at the median, the cap for 21% of groups, i.e.
# ~100-165 s at the ~50 tokens/s a request got beside training, against ~45-56 s steps: ~70 groups in
# flight, where lookahead 2 held 64 (and step 5 waited 30 s). Lookahead 4 holds up to ~160 and leaves
# slack 2, enough for a capped group (~3.3 steps); staleness ~4. The fill is then 5 steps (~1,280 requests).
# 32 prompts, not 64: a 32 x 8 synchronous step at the 8K cap took
# 89-137 s on an H100 (73-81% generation), so a 64 x 8 sync row cannot time two steps in one call.
# async2, not async1: with async_steps 1 a step still waits for its own longest completion.
# `warm` first on a new machine: one short synchronous run (8 prompts x 4, 64 tokens, the rows'
# micro-batch) that compiles and autotunes what every row uses: fla's GDN chunk kernels forward and
# backward for the trainer (their autotune keys hold the batch, heads and dims, not the length), the
# same kernels' varlen versions inside vLLM, tilelang's backward, vLLM's torch.compile and CUDA graphs.
# Measured 2026-12-01 on a cold H200: the trainer was still in its first backward 7.6 min into the
# sync row, so a cold row never reaches a timed step inside one call.
# Why the 8K cap (not the example of 16K): at 16K the first 64 x 8 generation alone ran past
# 190 s on a warm engine (call of 2026-12-01), so a synchronous step is ~4-5 min and neither row
# would fit two timed steps into its call; at 8K every step still holds capped completions (2.8% of
# them, every step of 20 drawn). LENGTHS=lognormal:2048:16384 runs the 16K rows.
# Each row's log, server log and per-step metrics are written as it goes (a row cut at the call's
# limit leaves them); every 120 s the benchmark dumps its Python stacks into the log, so a silent
# phase says where it is.
#
# Needs vLLM 0.26 + transformers (sets `train vllm`) in /tmp/site, staged as scripts/gpu_export.sh
# says; aiohttp and requests must import (checked first). vLLM's IPC weight-transfer module imports
# ray, which the sets do not carry: engines._ipc_engine covers that import (ray is used only for its
# ray send mode). The server runs in its own process, so posttrain's vLLM plugin (GDN conv loader
# fix) must load there too: posttrain is not pip-installed on the GPU machine, so a sitecustomize
# on PYTHONPATH registers it in every Python process vLLM starts.
# Memory split: the server takes SERVER_MEM of the GPU (0.4 on 100 GiB or more, 0.3 below), the
# trainer the rest; sync colocated vLLM takes VLLM_MEM (0.35) and sleeps while the trainer has the
# whole GPU. Each row stops itself before BUDGET_S (540 s from its start) and reports its steady
# steps; STEPS / ASTEPS cap them, PROMPTS (64) sets the prompts a step (8 rollouts each). Micro-batch:
# each mode at the largest that fits, since that is what a user would run: 16 for sync and warm, 16
# for async on 100 GiB or more, 4 below; MB sets all of them. (fla's autotune keys hold the batch,
# but its kernels' binaries do not, so a micro-batch the warm row did not run re-benchmarks cached
# binaries instead of compiling.)
# MAX_SEQS (1024): the server's running-request cap. On 2026-12-07 (H100) ~250-300 requests ran at
# once beside training at ~7.7K tokens/s, ~25-50 tokens/s each, so an 8K completion took minutes and
# the first honest async step (step 4 of async2) waited past 84 s for its tail; fewer running decode
# faster each (a shorter tail) at a lower total rate.
# POLICY=priority: the server schedules by priority and each request carries the step its group is
# for, so in the fill the first step's groups are not held back by later steps' (untried on a GPU).
# Why not 16 for async on an 80 GB H100 (2026-12-07): async2 at 16 ran out of memory in step 1's
# backward; the server held 38.4 GB (0.4 of the card plus its context and graphs), the trainer
# 39.3 GB (32.0 allocated, 6.6 reserved and free), where the synchronous trainer peaked at 65.7 GB
# with the card to itself (~0.23 MB a token of activations over its static ~25-35 GB): at 4 and
# a 0.3 server the trainer needs ~33 GB + fragmentation of the ~48 GB left. One GPU shared by a
# server and a trainer is async's own cost.
set -uo pipefail
what=${1:?row: warm sync_lognormal async1_lognormal async2_lognormal async4_slack_lognormal async6_slack_lognormal sync_fixed512 async1_fixed512}
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
# vLLM's INFO lines (KV-cache size, max concurrency, the 10 s stats: running requests, KV usage) said
# whether the server's KV cache capped its batch; on 2026-12-07 none reached the logs, only uvicorn's.
export VLLM_LOGGING_LEVEL=INFO
site=$(mktemp -d)
printf 'try:\n    import posttrain.vllm_plugin as _p\n    _p.register()\nexcept Exception as e:\n    print("posttrain vllm plugin:", e)\n' > "$site/sitecustomize.py"
export PYTHONPATH=$site:/tmp/site:$PWD
out=${OUT:-benchmarks/results}
mkdir -p "$out"
. scripts/kernel_cache.sh  # kernel caches in one folder; SAVE_CACHE=1 tars them back
# Fail in seconds, not after minutes of compiling: what `vllm serve` and the IPC transfer import
# (2026-12-01 the server died at start on ray, then on prometheus_fastapi_instrumentator).
python3 -c "import aiohttp, requests, vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)
import posttrain.vllm_plugin as p; p.register()
import vllm.entrypoints.openai.api_server, vllm.entrypoints.serve.instrumentator.metrics
from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferEngine" \
  || { echo "missing packages (see the header)"; exit 1; }
LN=${LENGTHS:-lognormal:2048:8192}
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
big=$([ "${mib:-0}" -ge 102400 ] && echo 1 || echo 0)
SYNC_MB=${MB:-16}
ASYNC_MB=${MB:-$([ "$big" = 1 ] && echo 16 || echo 4)}
SERVER_MEM=${SERVER_MEM:-$([ "$big" = 1 ] && echo 0.4 || echo 0.3)}
echo "GPU ${mib} MiB: micro-batch sync $SYNC_MB, async $ASYNC_MB; server memory $SERVER_MEM"
run() {  # name, args...   (RB: this row's budget in seconds, default BUDGET_S or 540)
  local name=$1; shift
  local budget=${RB:-${BUDGET_S:-540}}
  # --time-budget ends the run with a JSON before the call's limit (the timeout kills it without one)
  timeout $((budget + 45)) python3 benchmarks/async_rl.py "$@" --time-budget "$budget" --out "$out/async_rl_$name.json" \
      > "$out/async_rl_$name.full.log" 2>&1
  local rc=$?
  [ "${SAVE_CACHE:-0}" = 1 ] || tail -n 80 "$out/async_rl_$name.full.log" > "$out/async_rl_$name.log"  # $OUT returns 8 files at most
  echo "$name rc=$rc"; grep -E '^\[async_rl\]|"(completion_tokens_per_s[a-z_]*|wall_s_per_step|steady_state|blocked_on_rollouts_frac|kl_k3|logprob_gap_abs|gen_tokens_per_s|idle_frac|running_mean)"' "$out/async_rl_$name.full.log"
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tail -1
}
row() { run "$what" --prompts "${PROMPTS:-64}" "$@"; }  # a timed row: PROMPTS a step
sync_row() { row --mode sync --vllm-mem "${VLLM_MEM:-0.35}" --micro-batch "$SYNC_MB" "$@"; }
async_row() { row --mode async --server-mem "$SERVER_MEM" --micro-batch "$ASYNC_MB" --scheduling-policy "${POLICY:-fcfs}" \
  --max-num-seqs "${MAX_SEQS:-1024}" ${LOOKAHEAD:+--lookahead "$LOOKAHEAD"} "$@"; }
case $what in
  warm)  # compiles every kernel the rows use; its own figures are not a result
    RB=${WARM_S:-480} run warm --mode sync --lengths fixed:64 --prompts 8 --rollouts 4 --steps 2 --vllm-mem "${VLLM_MEM:-0.35}" --micro-batch "$SYNC_MB" ;;
  sync_lognormal)   sync_row --lengths "$LN" --steps "${STEPS:-8}" ;;
  async2_lognormal) async_row --async-steps 2 --lengths "$LN" --steps "${ASTEPS:-12}" ;;
  async1_lognormal) async_row --async-steps 1 --lengths "$LN" --steps "${ASTEPS:-12}" ;;
  sync_fixed512)    sync_row --lengths fixed:512 --steps "${STEPS:-12}" ;;
  async1_fixed512)  async_row --async-steps 1 --lengths fixed:512 --steps "${ASTEPS:-12}" ;;
  async4_slack_lognormal) LOOKAHEAD=${LOOKAHEAD:-2} async_row --async-steps 4 --lengths "$LN" --steps "${ASTEPS:-12}" ;;
  async6_slack_lognormal) LOOKAHEAD=${LOOKAHEAD:-2} async_row --async-steps 6 --lengths "$LN" --steps "${ASTEPS:-12}" ;;
  *) echo "unknown row $what"; exit 2 ;;
esac
# $OUT returns 8 files at most: with the cache parts, drop the per-step files (the JSON holds them)
[ "${SAVE_CACHE:-0}" != 1 ] || rm -f "$out"/*.metrics.jsonl
save_cache
