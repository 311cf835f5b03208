"""A recipe's cross-field rules: what types alone cannot express (names, references between stages,
files that must exist, ranges that depend on other fields). `load_recipe` runs them once, up front;
each failure is one `RecipeError` line naming the file and the field. Per-field ranges are
posttrain/data/validate.py's FIELD_RULES."""

from __future__ import annotations

import dataclasses
import urllib.parse
from pathlib import Path
from typing import Any

from posttrain.recipe import (NAME, RESERVED, DPOStage, GRPOStage, Recipe, RecipeError, SFTStage, _resolve_path,
                              suite_ref)


def _check_numbers(obj: Any, where: str) -> None:
    from posttrain.data.validate import field_problem
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            _check_numbers(v, f"{where}{f.name}.")
        elif isinstance(v, list) and v and all(dataclasses.is_dataclass(x) for x in v):
            for i, x in enumerate(v):
                _check_numbers(x, f"{where}{f.name}.{i}.")
        elif (problem := field_problem(type(obj).__name__, f.name, v)):
            raise RecipeError(f"{where}{f.name}: {problem}")


def _check_rewards(st: "GRPOStage", where: str) -> None:
    from reward import build_reward_fn
    if not st.rewards:
        raise RecipeError(f"{where}.rewards: a GRPO stage needs at least one reward")
    for i, spec in enumerate(st.rewards):
        if not isinstance(spec, dict) or "name" not in spec:
            raise RecipeError(f"{where}.rewards.{i}: must be a mapping with a name, got {spec!r}")
        w = spec.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w != w or abs(w) == float("inf"):
            raise RecipeError(f"{where}.rewards.{i}.weight: must be a finite number, got {w!r}")
        try:
            build_reward_fn([spec])
        except (ValueError, TypeError) as e:
            raise RecipeError(f"{where}.rewards.{i}: {e}") from None


def _check_kernel_cache(r: Recipe, src) -> None:
    """A kernel_cache directory is made on the first GPU stage, after earlier stages ran: say now if it
    cannot be (a file in the way, an unwritable parent), not as a traceback minutes into a run."""
    from posttrain.model.compile_cache import kernel_cache_dir, probe_write
    v = r.cfg.kernel_cache
    # `kernel_cache: false` reaches a str field as "False", and "" as the working dir: neither is a
    # directory anyone means, nor is "None" or "User" (the settings are lower case)
    if not v.strip() or v.lower() in ("true", "false", "yes", "no", "on", "off", "null") or (
            v.lower() in ("user", "run", "none") and v not in ("user", "run", "none")):
        raise RecipeError(f"{src}: kernel_cache: {v!r} is not user | run | none or a directory "
                          "(`none` keeps the libraries' own cache dirs)")
    if v in ("user", "none"):  # user: resolved per machine, where it runs (unusable there: a warning)
        return
    d = kernel_cache_dir(v, r.output_dir)
    if d.exists() and not d.is_dir():
        raise RecipeError(f"{src}: kernel_cache: {d} exists and is not a directory")
    probe_in = d if d.exists() else next(p for p in d.absolute().parents if p.exists())
    try:
        probe_write(probe_in)
    except OSError as e:
        what = "cannot write to" if d.exists() else "cannot create"
        raise RecipeError(f"{src}: kernel_cache: {what} {d}: {probe_in}: {e.strerror}") from None


def _is_http_url(url: str) -> bool:
    """
    >>> [_is_http_url(u) for u in ("http://127.0.0.1:8000", "https://h/v1", "localhost:8000", "http://h:80000")]
    [True, True, False, False]
    """
    u = urllib.parse.urlsplit(url)
    try:
        u.port  # raises on a port that is not a number in [0, 65535]
    except ValueError:
        return False
    return u.scheme in ("http", "https") and bool(u.hostname)


def check_recipe(r: Recipe, path: Path) -> None:
    """Cross-field rules that types alone cannot express."""
    src, names = r.source, list(r.stages)
    if not r.cfg.output_dir and not NAME.fullmatch(r.cfg.name.replace(".", "_")):
        raise RecipeError(f"{src}: name: {r.cfg.name!r} names the output dir checkpoints/NAME: use letters, digits, "
                          "'.', '_' and '-' (or set output_dir)")
    _check_numbers(r.cfg, f"{src}: ")
    from posttrain.data.templates import TEMPLATES
    if r.cfg.chat_template not in TEMPLATES and _resolve_path(r.cfg.chat_template, path) is None:
        raise RecipeError(f"{src}: chat_template: {r.cfg.chat_template!r} is neither a built-in template "
                          f"({', '.join(TEMPLATES)}) nor an existing file")
    if r.cfg.chat_template_system is not None and r.cfg.chat_template not in ("olmo3-instruct", "olmo3-think"):
        raise RecipeError(f"{src}: chat_template_system: only the olmo3-* templates add a default system turn "
                          f"(chat_template is {r.cfg.chat_template!r})")
    for key, ref in (("model.name", r.cfg.model.name), ("model.tokenizer", r.cfg.model.tokenizer)):
        ref = (ref or "").removeprefix("random:")
        if ref.startswith(("/", "./", "../", "~")) and _resolve_path(ref, path) is None:
            raise RecipeError(f"{src}: {key}: no such directory: {ref}")
        if ref.startswith("tiny:") and not (ref[5:].isdigit() and int(ref[5:]) > 0):
            raise RecipeError(f"{src}: {key}: tiny:N needs a vocabulary size N, got {ref!r}")
    out_dir = r.output_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise RecipeError(f"{src}: output_dir: {out_dir} exists and is not a directory")
    _check_kernel_cache(r, src)
    if r.cfg.model.dtype not in ("float32", "bfloat16"):
        raise RecipeError(f"{src}: model.dtype: must be float32 or bfloat16, got {r.cfg.model.dtype!r}")
    for i, (name, st) in enumerate(r.stages.items()):
        where = f"{src}: stages.{name}"
        if not NAME.fullmatch(name) or name in RESERVED:
            raise RecipeError(f"{where}: a stage name is a directory and an override key: use letters, digits, "
                              f"'_' and '-'{' (and not ' + name + ')' if name in RESERVED else ''}")
        _check_numbers(st, f"{where}.")
        if isinstance(st, GRPOStage):
            if st.epsilon_high < st.epsilon:
                raise RecipeError(f"{where}.epsilon_high: {st.epsilon_high} is below epsilon {st.epsilon}")
            _check_rewards(st, where)
        if st.init_from is not None and st.init_from not in names[:i]:
            raise RecipeError(f"{where}.init_from: {st.init_from!r} is not an earlier stage (earlier: {names[:i] or 'none'})")
        for key, mix in (("mix", st.mix), ("eval.mix", st.eval.mix)):
            if mix is not None and _resolve_path(mix, path) is None:
                raise RecipeError(f"{where}.{key}: data mix file not found: {mix}")
        if st.lr_scheduler not in ("linear", "constant", "cosine", "constant_with_warmup"):
            raise RecipeError(f"{where}.lr_scheduler: unknown schedule {st.lr_scheduler!r}")
        if not 0 <= st.warmup_ratio < 1:
            raise RecipeError(f"{where}.warmup_ratio: must be in [0, 1), got {st.warmup_ratio}")
        if st.learning_rate <= 0:
            raise RecipeError(f"{where}.learning_rate: must be > 0, got {st.learning_rate}")
        if isinstance(st, SFTStage) and st.batch_tokens < st.max_length:
            raise RecipeError(f"{where}.batch_tokens: {st.batch_tokens} is smaller than one row (max_length {st.max_length})")
        if isinstance(st, DPOStage) and st.eval_pairs and _resolve_path(st.eval_pairs, path) is None:
            raise RecipeError(f"{where}.eval_pairs: data mix file not found: {st.eval_pairs}")
        if isinstance(st, DPOStage) and st.overlong not in ("truncate", "drop"):
            raise RecipeError(f"{where}.overlong: must be truncate or drop, got {st.overlong!r}")
        if isinstance(st, DPOStage) and st.loss_type not in ("dpo_norm", "dpo"):
            raise RecipeError(f"{where}.loss_type: must be dpo_norm or dpo, got {st.loss_type!r}")
        if not (0 <= st.adam_beta1 < 1 and 0 <= st.adam_beta2 < 1):
            raise RecipeError(f"{where}.adam_beta1/adam_beta2: must be in [0, 1), got {st.adam_beta1}, {st.adam_beta2}")
        if isinstance(st, GRPOStage) and (st.mini_batches < 1 or st.prompts_per_step % st.mini_batches):
            raise RecipeError(f"{where}.mini_batches: must be >= 1 and divide prompts_per_step ({st.prompts_per_step}), "
                              f"got {st.mini_batches}")
        if isinstance(st, GRPOStage) and st.engine not in ("hf", "vllm"):
            raise RecipeError(f"{where}.engine: must be hf or vllm, got {st.engine!r}")
        if isinstance(st, GRPOStage) and st.vllm_mode not in ("colocate", "server"):
            raise RecipeError(f"{where}.vllm_mode: must be colocate or server, got {st.vllm_mode!r}")
        if isinstance(st, GRPOStage) and not 0 <= st.reward_crash_limit <= 1:
            raise RecipeError(f"{where}.reward_crash_limit: must be a fraction in [0, 1], got {st.reward_crash_limit}")
        if isinstance(st, GRPOStage) and st.engine == "vllm" and st.vllm_mode == "server" and not st.vllm_server_base_url:
            raise RecipeError(f"{where}.vllm_server_base_url: server mode needs the URL of a running `trl vllm-serve`")
        if isinstance(st, GRPOStage) and st.engine == "hf" and (st.vllm_mode == "server" or st.vllm_server_base_url):
            # else the stage would quietly generate with HF on the trainer's device and never touch the server
            raise RecipeError(f"{where}.engine: hf generates in the trainer's process; vllm_mode server / "
                              "vllm_server_base_url need engine: vllm")
        if isinstance(st, GRPOStage) and st.vllm_server_base_url:
            if not _is_http_url(st.vllm_server_base_url):
                raise RecipeError(f"{where}.vllm_server_base_url: must be http(s)://HOST[:PORT], "
                                  f"got {st.vllm_server_base_url!r}")
        if isinstance(st, GRPOStage):
            _check_async(st, where)
    for i, b in enumerate(r.cfg.benchmarks):
        if b.after != "exports" and b.after not in names:
            raise RecipeError(f"{src}: benchmarks.{i}.after: {b.after!r} is neither 'exports' nor a stage ({', '.join(names)})")
        if b.backend not in (None, "hf", "vllm"):
            raise RecipeError(f"{src}: benchmarks.{i}.backend: must be hf or vllm, got {b.backend!r}")
        if b.judge_url and not str(b.judge_url).startswith(("http://", "https://")):
            raise RecipeError(f"{src}: benchmarks.{i}.judge_url: {b.judge_url!r} is not an http(s) URL "
                              f"(e.g. http://127.0.0.1:8001/v1)")
        if b.judge_url and not b.judge_model:
            raise RecipeError(f"{src}: benchmarks.{i}.judge_model: needed with judge_url (the model name it serves)")
        from posttrain.suites import SuiteError, load_suite
        try:
            load_suite(suite_ref(b.suite, path))
        except SuiteError as e:
            raise RecipeError(f"{src}: benchmarks.{i}.suite: {e}") from None
    for name, st in r.stages.items():
        if isinstance(st, GRPOStage) and st.local_eval_suite:
            from posttrain.suites import SuiteError, load_suite
            try:
                load_suite(suite_ref(st.local_eval_suite, path))
            except SuiteError as e:
                raise RecipeError(f"{src}: stages.{name}.local_eval_suite: {e}") from None
    outs: dict[str, int] = {}
    for i, ex in enumerate(r.cfg.exports):
        out = ex.out or f"exports/{ex.kind}"
        if out in outs:
            raise RecipeError(f"{src}: exports.{i}: writes {out}, as exports.{outs[out]} does")
        outs[out] = i
        if ex.out and Path(ex.out).exists() and not Path(ex.out).is_dir():
            raise RecipeError(f"{src}: exports.{i}.out: {ex.out} exists and is not a directory")
        if ex.stage not in names:
            raise RecipeError(f"{src}: exports.{i}.stage: no stage named {ex.stage!r} (stages: {', '.join(names)})")
        if ex.kind not in ("instruct", "think"):
            raise RecipeError(f"{src}: exports.{i}.kind: must be instruct or think, got {ex.kind!r}")


def _check_async(st: GRPOStage, where: str) -> None:
    if st.async_steps < 0:
        raise RecipeError(f"{where}.async_steps: must be >= 0, got {st.async_steps}")
    if not 1 <= st.weight_sync_steps <= st.async_steps + 1:
        raise RecipeError(f"{where}.weight_sync_steps: must be in [1, async_steps + 1 = {st.async_steps + 1}] "
                          f"(weights older than async_steps would break the staleness bound), got {st.weight_sync_steps}")
    full = st.async_steps - st.weight_sync_steps + 1
    if st.async_lookahead is not None and not (st.async_steps and 0 <= st.async_lookahead <= full):
        raise RecipeError(f"{where}.async_lookahead: must be in [0, async_steps - weight_sync_steps + 1 = {full}] "
                          f"with async_steps > 0 (further ahead would break the staleness bound), got {st.async_lookahead}")
    if st.async_steps and st.engine == "vllm" and st.vllm_mode == "colocate":
        raise RecipeError(f"{where}.async_steps: async RL needs the engine in its own process "
                          "(vllm_mode: server, same or other GPUs) or engine: hf; colocate sleeps vLLM while training")
    from posttrain.launch import world_size
    if st.async_steps and st.mini_batches > 1:
        raise RecipeError(f"{where}.async_steps: not yet with mini_batches > 1 (staleness is counted in optimizer "
                          "steps, one per generation batch)")
    if st.async_steps and st.engine == "hf" and world_size() > 1:
        raise RecipeError(f"{where}.async_steps: the hf engine is for CPU and tests; on several GPUs use vllm_mode: server")
