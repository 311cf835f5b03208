"""Where compiled kernels and autotune results live, so later stages and reruns skip the warm-up.

On CUDA the first step of each new set of shapes compiles and autotunes: fla's Triton GDN/conv/norm
kernels (autotune results cached by Triton: fla sets `cache_results`, FLA_CACHE_RESULTS=1), tilelang's
GDN backward on Hopper + Triton < 3.7.1, and flex attention through torch.compile (inductor). Measured
at the 7B on one H200: a first SFT step of 286 s with empty caches, 6 s on warm ones (benchmarks/RESULTS.md). Each library has its own cache dir,
by default scattered over ~/.triton, ~/.tilelang and /tmp/torchinductor_$USER (the last one gone after
a reboot or on a fresh container). `kernel_cache` in the recipe puts all three in one place:

- `user` (default): $POSTTRAIN_KERNEL_CACHE, else $XDG_CACHE_HOME/posttrain/kernels, else
  ~/.cache/posttrain/kernels: shared by every run and stage of this user on this machine;
- `run`: RUN/kernel_cache, travels with the run's output dir (a cluster job's scratch, say);
- `none`: the libraries' own defaults; any other value is a directory.

Any setting but `none` overrides TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR, TILELANG_CACHE_DIR and
VLLM_CACHE_ROOT. vLLM's: the RL stage's colocated engine compiles its model (torch.compile, CUDA graphs)
into VLLM_CACHE_ROOT, and while it builds it points TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR at a
folder of its own under that root, process-wide (vllm 0.26 `compilation/decorators.py` and
`compiler_interface.py` `initialize_cache`), so the trainer's kernels compiled after the engine land there
too: with the root inside this cache they are still kept for reruns. A directory that cannot be made or
written falls back to the libraries' defaults with a warning: the cache only saves time. A first
version kept variables already set; on the H200 (2026-12-01) the inductor part then never reached the
recipe's dir: torch's inductor `cache_dir()` writes its default into the environment when first called,
so a variable already there says nothing about what the user wants. Keep your own with `kernel_cache: none`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("posttrain")

ENV = {"TRITON_CACHE_DIR": "triton", "TORCHINDUCTOR_CACHE_DIR": "inductor", "TILELANG_CACHE_DIR": "tilelang",
       "VLLM_CACHE_ROOT": "vllm"}
_state: dict = {}


def kernel_cache_dir(setting: str, run_dir: Path) -> Path | None:
    """The directory a `kernel_cache` setting names (None: leave the libraries' defaults).

    >>> kernel_cache_dir("run", Path("/runs/a"))
    PosixPath('/runs/a/kernel_cache')
    >>> kernel_cache_dir("none", Path("/runs/a")) is None
    True
    """
    if setting == "none":
        return None
    if setting == "run":
        return run_dir / "kernel_cache"
    if setting == "user":
        if os.environ.get("POSTTRAIN_KERNEL_CACHE"):
            return Path(os.environ["POSTTRAIN_KERNEL_CACHE"]).expanduser()
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "posttrain" / "kernels"
    return Path(setting).expanduser()


def probe_write(d: Path) -> None:
    """Raise OSError unless a file can be made in the existing dir `d`. A probe, not os.access: root
    passes access checks on read-only mounts and /proc (the recipe check probes the same way)."""
    os.rmdir(tempfile.mkdtemp(dir=d, prefix=".posttrain-probe-"))


def _usable(root: Path) -> str | None:
    """Why `root` cannot hold the caches (None: it can); makes its folders."""
    try:
        for sub in ENV.values():
            (root / sub).mkdir(parents=True, exist_ok=True)
        probe_write(root / "triton")
    except OSError as e:
        return f"{e.strerror or e}: {e.filename or root}"
    return None


def use_kernel_cache(setting: str, run_dir: Path) -> dict:
    """Point the kernel caches at `setting`'s directory (environment variables, read by the libraries
    when they compile, so this works after they are imported) and say whether it is warm.

    Returns {"dir": ..., "files": files already there, "state": "warm" | "cold" | "default"}; a
    directory that cannot be used leaves the environment as it was (state "default", with "problem")."""
    root = kernel_cache_dir(setting, run_dir)
    problem = None
    if root is not None:
        root = root.absolute()  # the libraries read it from other working dirs (vLLM's workers)
        problem = _usable(root)
        if problem:
            log.warning("kernel_cache %s: cannot use %s (%s); the libraries' own cache dirs are used",
                        setting, root, problem)
            root = None
    if root is None:
        state = {"dir": None, "files": 0, "state": "default", **({"problem": problem} if problem else {})}
    else:
        for var, sub in ENV.items():
            os.environ[var] = str(root / sub)
        files = sum(len(fs) for sub in ENV.values() for _, _, fs in os.walk(root / sub))
        state = {"dir": str(root), "files": files, "state": "warm" if files else "cold"}
    _state.clear()
    _state.update(state)
    return dict(state)


def cache_state() -> dict:
    """What the last `use_kernel_cache` found ({} if it was not called: CPU runs)."""
    return dict(_state)


def compiling_now() -> str:
    """What a first CUDA step compiles on this machine's packages (kernels.py decides the same way)."""
    from posttrain.model.kernels import flash_attn_available, fla_problem, tilelang_needed
    what = [] if fla_problem() else ["fla GDN/conv/norm"]
    if what and tilelang_needed():
        what.append("tilelang's GDN backward")
    if not flash_attn_available():
        what.append("flex attention")
    return ", ".join(what) or "torch kernels"


def warmup_message(state: dict, compiling: str | None = None) -> str:
    """The one line a user sees before the first step's long compile."""
    where = ("the libraries' default dirs" if state["dir"] is None else
             f"{state['dir']} ({state['state']}: {state['files']} files)")
    if state.get("problem"):
        where += f"; the recipe's dir is unusable: {state['problem']}"
    return (f"the first step of each new shape compiles and autotunes kernels ({compiling or compiling_now()}); "
            "the progress bar stands still meanwhile: ~5 min at 7B with a cold cache (286 s on an H200), "
            f"seconds to a minute warm. Kernel cache: {where} (recipe: kernel_cache)")
