#!/usr/bin/env bash
# Issue 21's same-machine pair as one detached job (scripts/detach.sh): the async row first, then the
# synchronous baseline. Why this order: on a machine that carried no kernel caches the async row's
# server generates its fill while the trainer compiles, so the cold compile costs it little, and the
# sync row then finds every kernel compiled. Why one job: the pair outlasts a device call, and a
# job that runs on between calls does not lose the seconds between them. The rows' ~10 files go back
# as one tarball ($OUT returns 8 files at most).
#   bash scripts/detach.sh start pair env ASYNC_S=800 SYNC_S=360 bash scripts/gpu_async_pair.sh
#   bash scripts/detach.sh wait pair 560      (again while rc 3)
# ASYNC_S / SYNC_S: each row's budget in seconds; AROW (async6_slack_lognormal), LOOKAHEAD (4) and
# PROMPTS (32) as in gpu_async_rl.sh.
set -uo pipefail
[ -n "${OUT:-}" ] || { echo "gpu_async_pair: needs OUT (a device call's or a detached job's folder)"; exit 2; }
LOOKAHEAD=${LOOKAHEAD:-4} PROMPTS=${PROMPTS:-32} BUDGET_S=${ASYNC_S:-800} \
  bash scripts/gpu_async_rl.sh "${AROW:-async6_slack_lognormal}"
PROMPTS=${PROMPTS:-32} BUDGET_S=${SYNC_S:-360} bash scripts/gpu_async_rl.sh sync_lognormal
tar -C "$OUT" -czf /tmp/pair.tgz . && find "$OUT" -mindepth 1 -delete && mv /tmp/pair.tgz "$OUT/"
