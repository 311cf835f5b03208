# Sourced by the GPU jobs (gpu_async_rl.sh, gpu_throughput.sh): one folder for every kernel cache
# (Triton, tilelang, inductor, vLLM's compile cache). A machine forgets its disk when it goes back,
# and a cold 7B-width step compiles and autotunes for 3-5 minutes of a 30-minute session:
# `SAVE_CACHE=1` tars what this machine compiled back through $OUT in 15 MiB parts (CACHE_NAME.tgz.part-*); put them in
# the ignored folder kernel-cache/ and name it in `carry`, and the next machine of the session
# starts warm. Needs $out set. Defines save_cache.
# A call carries 64 MiB at most, tree included: with `stage_gpu.sh train` the last wheel set (41 MB) and
# these caches (~20 MB) do not fit one call (2026-12-07); copy that set to /tmp/gw in a call of its own,
# then carry kernel-cache/ with the call that installs and runs.
kc=${KERNEL_CACHE:-/tmp/posttrain-kernels}
export TRITON_CACHE_DIR=$kc/triton TORCHINDUCTOR_CACHE_DIR=$kc/inductor TILELANG_CACHE_DIR=$kc/tilelang VLLM_CACHE_ROOT=$kc/vllm
mkdir -p "$kc"
# Several saved sets may sit side by side (CACHE_NAME names a set: e.g. kcache for the 7B's widths,
# kcache-rl for the RL rows'); every set there is restored, into the one folder.
if [ ! -e "$kc/.restored" ]; then
  for first in kernel-cache/*.tgz.part-aa; do
    [ -e "$first" ] || continue
    cat "${first%aa}"* | tar -xzf - -C "$kc" && echo "kernel cache $(basename "${first%.tgz.part-aa}") restored"
    touch "$kc/.restored"
  done
  [ -e "$kc/.restored" ] && echo "kernel caches: $(du -sh "$kc" | cut -f1)"
fi
save_cache() {
  [ "${SAVE_CACHE:-0}" = 1 ] || return 0
  local name=${CACHE_NAME:-kcache}
  rm -f "$out/$name".tgz.part-*
  # only what this machine compiled: sets restored from kernel-cache/ keep their own parts (saving
  # them again would grow every set by the others and soon pass a call's 64 MiB carry)
  local since=()
  [ -e "$kc/.restored" ] && since=(--newer-mtime="$kc/.restored")
  tar -czf - -C "$kc" --exclude=.restored ${since[@]+"${since[@]}"} . | split -b 15M - "$out/$name.tgz.part-"
  ls -la "$out/$name".tgz.part-*
}
