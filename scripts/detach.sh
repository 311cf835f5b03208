#!/usr/bin/env bash
# A GPU job longer than one device call (600 s at most): `start` runs a command in a new process
# session, which the device machine leaves running between calls while it stays warm (device README:
# "except one that started a new process session (setsid, a daemon)"); `wait` blocks up to SECONDS
# for it, prints its log's new lines, and when it has ended copies what it wrote to its own $OUT
# into this call's $OUT. Why: an async RL row needs warm-up, a fill of lookahead + 1 steps and then
# enough steady steps to mean something; on an H100 that is ~900 s (2026-12-07), one call holds 600.
# Make the calls back to back: the machine goes back 30 s after a call ends, and the job with it.
#
#   bash scripts/detach.sh start NAME CMD...     (returns at once; CMD sees OUT=<the job's folder>)
#   bash scripts/detach.sh wait NAME SECONDS     (rc 0 once the job has ended, 3 while it runs)
set -uo pipefail
op=${1:?start|wait}; name=${2:?job name}; shift 2
dir=${DETACH_DIR:-/tmp/detached}/$name
case $op in
  start)
    [ $# -gt 0 ] || { echo "detach: start $name needs a command"; exit 2; }
    rm -rf "$dir" && mkdir -p "$dir/out"
    # rc is written last, so its presence means the job has ended (its own exit status inside)
    OUT=$dir/out setsid nohup bash -c '"$@" > "$0/log" 2>&1; echo $? > "$0/rc.tmp"; mv "$0/rc.tmp" "$0/rc"' \
      "$dir" "$@" < /dev/null > /dev/null 2>&1 &
    echo "detach: $name started (pid $!), log $dir/log" ;;
  wait)
    limit=${1:?seconds}
    [ -d "$dir" ] || { echo "detach: no job $name (started on a machine that has gone back?)"; exit 2; }
    seen=$(cat "$dir/seen" 2>/dev/null || echo 0)
    end=$((SECONDS + limit))
    while [ ! -e "$dir/rc" ] && [ $SECONDS -lt $end ]; do sleep 2; done
    [ -e "$dir/log" ] && tail -n +$((seen + 1)) "$dir/log" && wc -l < "$dir/log" > "$dir/seen"
    if [ ! -e "$dir/rc" ]; then echo "detach: $name still running"; exit 3; fi
    [ -n "${OUT:-}" ] && cp -r "$dir/out/." "$OUT/"
    echo "detach: $name ended rc=$(cat "$dir/rc")" ;;
  *) echo "detach: unknown op $op (start|wait)"; exit 2 ;;
esac
