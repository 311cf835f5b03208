"""`posttrain`: run recipes stage by stage, inspect stages and data mixes, check the machine.

    posttrain run tiny                                  # SFT -> DPO -> GRPO -> export on CPU
    posttrain run RECIPE [--stage S | --from S] [--mix STAGE=PATH] [key=value ...] [--dry-run]
    posttrain stages RECIPE                             # status and headline metric per stage
    posttrain mix data_mixes/x.yaml                     # resolved sources, rows, tokens, hash
    posttrain export RUN --stage rl --as think --out DIR # verified HF/vLLM checkpoint
    posttrain eval RUN [--stage S]                      # re-evaluate; one table across stages
    posttrain doctor                                    # torch/CUDA, fla/triton/tilelang, kernels
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from posttrain.launch import is_main_process
from posttrain.rundir import RunDir

log = logging.getLogger("posttrain")


def _table(rows: list[list], header: list[str]) -> str:
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{x}}}" for x in w)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * x for x in w))] + [fmt.format(*r) for r in rows])


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else ("" if x is None else str(x))


def _load(args):
    from posttrain.recipe import RecipeError, load_recipe
    for flag, value in (("--gpus", getattr(args, "gpus", None)), ("--gpu-gb", getattr(args, "gpu_gb", None))):
        if value is not None and not value > 0:
            raise RecipeError(f"{flag} {value}: must be > 0")
    mixes = {}
    for m in args.mix or []:
        if "=" not in m or not m.split("=", 1)[1]:
            raise RecipeError(f"--mix {m}: expected STAGE=PATH")
        s, p = m.split("=", 1)
        mixes[s] = p
    return load_recipe(args.recipe, args.overrides, mixes)


def cmd_run(args) -> int:
    from posttrain.hub import check_hub, recipe_refs
    from posttrain.pipeline import Pipeline
    recipe = _load(args)
    check_hub(recipe_refs(recipe))
    pipe = Pipeline(recipe)
    plans = pipe.plan(args.stage, args.start, args.force, dry=args.dry_run)
    print(f"recipe {recipe.source} -> {recipe.output_dir}")
    print(_table([[p.name, p.kind, p.action, p.init_from or recipe.cfg.model.name, _fmt(p.rows) or "?", p.key, p.note]
                  for p in plans], ["stage", "kind", "action", "starts from", "rows", "key", "note"]))
    if args.dry_run:
        _print_estimates(recipe, plans, args.gpus, args.zero, args.gpu_gb)
        print("dry run: nothing was changed")
        return 0
    t0 = time.time()
    results = pipe.run(args.stage, args.start, args.force)
    if not is_main_process():
        return 0
    rc = finish_run(recipe)
    print(f"\nfinished in {time.time() - t0:.0f} s; outputs in {recipe.output_dir}"
          f" (report: {RunDir(recipe.output_dir).report_file})")
    print(_table([[r.stage, r.action, _fmt(r.seconds), _fmt(r.summary.train_loss),
                   _fmt(r.summary.base_accuracy), _fmt(r.summary.accuracy)] for r in results],
                 ["stage", "action", "seconds", "train loss", "accuracy before", "accuracy after"]))
    return rc


def finish_run(recipe) -> int:
    """After the stages: the recipe's exports of finished stages, then the report. Either failing
    is said in one line and leaves every trained stage done (a rerun skips them)."""
    from posttrain.export import run_exports
    from posttrain.report import ReportError, write_report
    rd, rc = RunDir(recipe.output_dir), 0
    for ex in recipe.cfg.exports:
        if rd.done(ex.stage) is None:
            continue
        try:
            for path in run_exports(rd.root, [ex]):
                log.info("export ready: %s", path)
        except Exception as e:  # any failure: training is done and stays done
            rc = 1
            print(f"posttrain: error: export of {ex.stage} as {ex.kind} failed: {e}; the trained stages are kept "
                  f"(retry: posttrain export {rd.root} --stage {ex.stage} --as {ex.kind} --force)", file=sys.stderr)
    try:
        run_benchmarks(recipe)
    except Exception as e:  # as an export: the trained stages stay done
        rc = 1
        print(f"posttrain: error: benchmark suites failed: {e} (retry: posttrain eval {rd.root} --suite ...)",
              file=sys.stderr)
    try:
        log.info("report: %s", write_report(rd.root))
    except (ReportError, OSError) as e:
        rc = 1
        print(f"posttrain: error: report failed: {e} (retry: posttrain report {rd.root})", file=sys.stderr)
    return rc


def run_benchmarks(recipe) -> None:
    """The recipe's `benchmarks:` suites (off unless listed), on what has finished; cached per model."""
    from pathlib import Path
    rd = RunDir(recipe.output_dir)
    for b in recipe.cfg.benchmarks:
        import torch
        from posttrain.harness import format_summary, run_eval
        from posttrain.recipe import suite_ref
        if b.after != "exports" and not rd.done(b.after):
            continue
        if b.after == "exports" and not any(rd.exports_dir.glob("*/export.json")):
            continue
        cuda = torch.cuda.is_available()
        judge = {"base_url": b.judge_url, "model": b.judge_model} if b.judge_url else None
        summary = run_eval(rd.root, suite_ref(b.suite, Path(recipe.source)),
                           None if b.after == "exports" else b.after, b.backend or ("vllm" if cuda else "hf"),
                           b.data_dir, judge, dtype="bfloat16" if cuda else "float32")
        log.info("benchmark suite %s after %s:\n%s", b.suite, b.after, format_summary(summary))


def _print_estimates(recipe, plans, gpus: int | None, zero: int | None, gpu_gb: float) -> None:
    """Steps, tokens and memory per GPU for each planned stage (posttrain.memory)."""
    from posttrain.launch import world_size
    from posttrain.memory import config_params, model_config, stage_estimate, stage_steps
    gpus = gpus or world_size()
    zero = zero if zero is not None else (3 if gpus > 1 else 0)
    config, note = model_config(recipe.cfg.model.name)
    params = config_params(config)
    print(f"\nestimate: {params:,} parameters, {gpus} GPU(s) of {gpu_gb:g} GB, ZeRO-{zero}"
          + (f" ({note})" if note else ""))
    rows, notes = [], []
    for p in plans:
        st = recipe.stages[p.name]
        steps, tokens, warnings = stage_steps(st, p.rows, gpus)
        notes += [f"{p.name}: {w}" for w in warnings]
        m = stage_estimate(config, st, gpus, zero, gpu_gb, params=params)
        rows.append([p.name, _fmt(steps) or "?", f"{tokens:,}", f"{m.weights_gb + m.grads_gb + m.optimizer_gb:.1f}",
                     f"{m.activations_gb:.1f}", f"{m.logits_gb:.1f}", f"{m.rollout_engine_gb:.1f}",
                     f"{m.total_gb:.1f}" + (" (over)" if m.total_gb > gpu_gb else "")])
    print(_table(rows, ["stage", "steps", "tokens/step (max)", "weights+grads+optim GB", "activations GB",
                        "logits GB", "rollout engine GB", "total GB/GPU"]))
    for n in notes:
        print(f"warning: {n}")


def cmd_stages(args) -> int:
    from posttrain.pipeline import Pipeline
    recipe = _load(args)
    pipe = Pipeline(recipe)
    rows = []
    for p in pipe.plan():
        st = pipe.status(p.name, p.key, p.legacy_key)
        done = pipe.run_dir.done(p.name)
        s = done.summary if done else None
        metric = "" if s is None else f"accuracy {s.accuracy:.3f}" if s.accuracy is not None else (
            f"train loss {s.train_loss:.4g}" if s.train_loss is not None else "")
        rows.append([p.name, p.kind, st, pipe.stage_dir(p.name) if done else "", metric])
    print(_table(rows, ["stage", "kind", "status", "output", "headline metric"]))
    return 0


def cmd_mix(args) -> int:
    from posttrain.data.mix import count_tokens
    from posttrain.data.templates import resolve_template
    from posttrain.data.validate import reason_counts, resolve_for
    from posttrain.model.load import load_tokenizer
    from posttrain.data.mix import MixError, load_mix_config
    from posttrain.hub import check_hub
    try:
        check_hub([args.tokenizer] + [s.path for s in load_mix_config(args.path).sources])
    except MixError:
        pass  # resolve_for below says what is wrong with the file
    rewards = _recipe_rewards(args.rewards)[0] if args.rewards else None
    try:
        template = resolve_template(args.chat_template)
    except ValueError as e:
        raise MixError(f"--chat-template {args.chat_template}: {str(e).split(': ', 1)[-1]}") from None
    m = resolve_for(args.path, args.stage_kind or "any", f"--stage-kind {args.stage_kind}", rewards)
    try:
        tok = load_tokenizer(args.tokenizer, template)
    except (OSError, ValueError) as e:
        raise MixError(f"--tokenizer {args.tokenizer}: cannot load it ({str(e).strip().splitlines()[0][:200]})") from None
    print(f"mix {m.manifest['name']} ({m.manifest['mix']}), format {m.format}, seed {m.manifest['seed']}")
    print(_table([[s["path"], s["split"], s["available"], s["taken"], s["invalid_dropped"], s["sha256"][:12]]
                  for s in m.manifest["sources"]], ["source", "split", "available", "taken", "invalid", "sha256"]))
    for reason, n in sorted(reason_counts(m).items(), key=lambda x: -x[1]):
        print(f"dropped {n} invalid rows: {reason}")
    tokens = count_tokens(m.rows, tok)
    print(f"rows {len(m.rows)}, tokens {tokens:,} ({args.tokenizer} tokenizer), dedup removed "
          f"{m.manifest['dedup_removed']}, sha256 {m.manifest['sha256']}")
    report = None
    if m.format == "prompt":
        report = _label_report(m.rows, args.rewards)
    if args.json:
        print(json.dumps({**m.manifest, "tokens": tokens, **({"verifier_labels": report} if report else {})}, indent=2))
    return 0


def _recipe_rewards(recipe_ref: str) -> tuple[list[dict], str]:
    """The reward specs of a recipe's (first) GRPO stage, and where they came from."""
    from posttrain.recipe import GRPOStage, RecipeError, load_recipe
    recipe = load_recipe(recipe_ref, [], {})
    grpo = [(n, st) for n, st in recipe.stages.items() if isinstance(st, GRPOStage)]
    if not grpo:
        raise RecipeError(f"--rewards {recipe_ref}: the recipe has no grpo stage")
    return grpo[0][1].rewards, f"{recipe_ref} stage {grpo[0][0]}"


def _label_report(rows: list[dict], recipe_ref: str | None) -> list[dict]:
    """Print and return, per verifier label, its rows and the rewards that score it (reward.health)."""
    from reward.health import format_report, label_report
    specs = [{"name": n} for n in ("math", "ifeval", "code", "judge")]
    where = "posttrain's default routes"
    if recipe_ref:
        specs, where = _recipe_rewards(recipe_ref)
    report = label_report(rows, specs)
    print(f"\nverifier labels -> rewards ({where})")
    print(_table(format_report(report), ["label", "rows", "scored by"]))
    return report


def cmd_doctor(args) -> int:
    from posttrain.model.kernels import kernel_report
    from importlib.metadata import PackageNotFoundError, version
    from posttrain.hub import endpoint, hub_problem
    rep = kernel_report()
    rep["hub"] = f"unreachable: {hub_problem()}" if hub_problem() else f"reachable ({endpoint()})"
    for dist in ("trl", "accelerate", "deepspeed", "vllm", "math-verify"):
        try:
            rep[dist] = version(dist)
        except PackageNotFoundError:
            rep[dist] = "not installed" + (" (pip install 'posttrain[gpu]')" if dist in ("deepspeed", "vllm") else "")
    width = max(len(k) for k in rep)
    for k, v in rep.items():
        print(f"{k:<{width}}  {v}")
    return 0


def _add_suite_args(ev: argparse.ArgumentParser) -> None:
    g = ev.add_argument_group("benchmark suites (posttrain/harness.py, lm-eval)")
    g.add_argument("--suite", help="think | instruct | tiny | a suite YAML: benchmark the export(s) or stage(s)")
    g.add_argument("--backend", choices=["hf", "vllm"], help="generation engine (default: vllm on CUDA, else hf)")
    g.add_argument("--data-dir", help="offline: DIR/<task>.jsonl|json|parquet replaces each task's hub dataset "
                                      "(default $POSTTRAIN_EVAL_DATA)")
    g.add_argument("--no-baseline", action="store_true", help="skip scoring the stage/base each model started from")
    g.add_argument("--judge-url", help="OpenAI-compatible judge endpoint (enables judged chat tasks)")
    g.add_argument("--judge-model", help="judge model name at --judge-url")
    g.add_argument("--dtype", default=None, help="model dtype (default float32 on CPU, bfloat16 on CUDA)")
    g.add_argument("--force", action="store_true", help="rescore even if results for the same model and suite exist")


def cmd_eval(args) -> int:
    """`posttrain eval RUN`: the held-out table; with --suite, the benchmark suite through lm-eval."""
    from posttrain import report as report_mod
    if not args.suite:
        return report_mod.cmd_eval(args)
    from posttrain.harness import format_summary, run_eval
    from posttrain.suites import SuiteError
    import torch
    cuda = torch.cuda.is_available()
    judge = {"base_url": args.judge_url, "model": args.judge_model} if args.judge_url else None
    if judge and not args.judge_model:
        print("posttrain: error: --judge-url needs --judge-model", file=sys.stderr)
        return 2
    try:
        summary = run_eval(args.run, args.suite, args.stage, args.backend or ("vllm" if cuda else "hf"),
                           args.data_dir, judge, baseline=not args.no_baseline, force=args.force,
                           batch_size=args.batch_size or 32, dtype=args.dtype or ("bfloat16" if cuda else "float32"))
    except (SuiteError, ValueError) as e:
        print(f"posttrain: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def cmd_serve(args) -> int:
    from posttrain.serve import main as serve_main
    return serve_main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="posttrain", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a recipe's stages")
    r.add_argument("recipe", help="recipe file or built-in name (tiny, olmo-hybrid-7b-think, ...)")
    r.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. stages.sft.learning_rate=1e-5")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--stage", help="run only this stage (its inputs must exist)")
    g.add_argument("--from", dest="start", help="run this stage and the ones after it")
    r.add_argument("--mix", action="append", metavar="STAGE=PATH", help="swap a stage's data mix")
    r.add_argument("--force", action="store_true", help="rerun selected stages even if up to date")
    r.add_argument("--dry-run", action="store_true", help="print the plan, steps, tokens and memory per GPU; change nothing")
    r.add_argument("--gpus", type=int, help="GPUs for the --dry-run memory estimate (default: $WORLD_SIZE or 1)")
    r.add_argument("--zero", type=int, choices=[0, 2, 3], help="ZeRO stage for the estimate (default: 3 on >1 GPU)")
    r.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU for the estimate")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("stages", help="stages of a recipe with status and outputs")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_stages, mix=None)
    m = sub.add_parser("mix", help="resolve a data mix: sources, rows, tokens, hash")
    m.add_argument("path")
    m.add_argument("--tokenizer", default="tiny", help="tokenizer for token counts (tiny, hub id or dir)")
    m.add_argument("--chat-template", default="olmo-instruct")
    m.add_argument("--json", action="store_true", help="also print the manifest as JSON")
    m.add_argument("--rewards", metavar="RECIPE", help="report which of this recipe's RL rewards score each "
                   "verifier label (default: posttrain's default routes); with --stage-kind grpo, rows need "
                   "the ground truth of these rewards (default: a GRPO stage's default, math)")
    m.add_argument("--stage-kind", choices=["sft", "dpo", "grpo", "eval"],
                   help="also check every row for what a stage of this kind needs")
    m.set_defaults(fn=cmd_mix)
    d = sub.add_parser("doctor", help="GPU, fla/triton/tilelang, deepspeed, vllm: what would run")
    d.set_defaults(fn=cmd_doctor)
    from posttrain import export as export_mod, report as report_mod
    ex = sub.add_parser("export", help="verified HF/vLLM checkpoint of a finished stage")
    export_mod.build_parser(ex)
    ex.set_defaults(fn=export_mod.cmd_export)
    ev = sub.add_parser("eval", help="re-evaluate finished stages; one table base -> each stage")
    report_mod.build_eval_parser(ev)
    _add_suite_args(ev)
    ev.set_defaults(fn=cmd_eval)
    rp = sub.add_parser("report", help="write RUN/report.html")
    report_mod.build_report_parser(rp)
    rp.set_defaults(fn=report_mod.cmd_report)
    sv = sub.add_parser("serve", help="OpenAI-compatible chat server over a model dir (for judge tests)",
                        add_help=False)
    sv.add_argument("rest", nargs=argparse.REMAINDER)
    sv.set_defaults(fn=cmd_serve)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Dotlist overrides may come after options (`run tiny --stage rl a.b=1`), which argparse's
    # positional matching does not allow: collect the leftovers that look like key=value.
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-") or "=" not in r or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    # Under a distributed launch every rank runs this; only the main one talks (others: warnings).
    main_rank = is_main_process()
    if not main_rank:
        sys.stdout = open(os.devnull, "w")
    level = (logging.DEBUG if args.verbose else logging.INFO) if main_rank else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    from posttrain.data.mix import MixError
    from posttrain.export import ExportError
    from posttrain.pipeline import PipelineError
    from posttrain.recipe import RecipeError
    from posttrain.report import ReportError
    from reward.health import RewardHealthError
    try:
        return args.fn(args)
    except (RecipeError, MixError, PipelineError, ExportError, ReportError, RewardHealthError) as e:
        print(f"posttrain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posttrain: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
