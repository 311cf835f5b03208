"""Cross-stage evals and the run report.

    posttrain eval RUN [--stage S] [--mix EVAL_MIX] [--max-examples N] [--base]
        re-evaluates each finished stage's model on its eval mix (or EVAL_MIX), rewrites
        RUN/STAGE/evals.json, and prints one table: base -> each stage.
    posttrain report RUN
        writes RUN/report.html: one self-contained file (plots embedded as base64 PNG) to
        read or mail without the checkpoints beside it.

Why one table: every stage is scored by the same greedy eval and the same verifiable reward,
so a row per stage shows what each stage bought (and what it cost in format or length).
The report reads only files a run leaves (DONE, metrics.jsonl, evals*.json, manifest.json,
config.yaml, exports/*/export.json), so it also works on a run copied off the GPU machine.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import sys
import time
from pathlib import Path

from posttrain.plots import EVAL_PLOT, run_plots
from posttrain.rundir import RunDir, StageRecord, read_json, saved_template, write_json, write_text

log = logging.getLogger("posttrain")


# ---- the eval table ----------------------------------------------------------------------------
def stage_time_tokens(s: StageRecord, run_summary: dict | None = None) -> tuple[float | None, float | None, float | None]:
    """(seconds, tokens, mean tokens/s) of a stage from what it logged."""
    m = s.metrics
    secs = (run_summary or {}).get("seconds") or s.summary.seconds
    if secs is None:
        secs = next((r["train_runtime"] for r in reversed(m) if "train_runtime" in r), None)
    if secs is None and len(m) > 1 and "time" in m[0]:
        secs = m[-1]["time"] - m[0]["time"]
    tokens = max((r["num_tokens"] for r in m if isinstance(r.get("num_tokens"), (int, float))), default=None)
    tps = [r["tokens_per_s"] for r in m if isinstance(r.get("tokens_per_s"), (int, float))]
    return secs, tokens, (sum(tps) / len(tps) if tps else None)


def eval_rows(run_dir: Path) -> list[dict]:
    """The cross-stage eval table: base model (if evaluated), then each finished stage."""
    rd = RunDir(run_dir)
    rows = []
    stages = [rd.record(n) for n in rd.stage_names()]
    base = next((s.evals_base for s in stages if s.evals_base), None)
    if base:
        rows.append({"stage": "base", "kind": "", **_ev(base)})
    for s in stages:
        if not s.done:
            continue
        summ = s.summary
        row = {"stage": s.name, "kind": s.kind, **_ev(s.evals or {})}
        if summ.pref_accuracy is not None:
            row.update(pref_accuracy=summ.pref_accuracy, pref_accuracy_before=summ.pref_accuracy_before,
                       margin=summ.margin)
        rows.append(row)
    return rows


def _ev(e: dict) -> dict:
    return {k: e.get(k) for k in ("n", "accuracy", "format", "mean_length")}


def _f(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


EVAL_COLUMNS = [("stage", "stage"), ("kind", "kind"), ("n", "n"), ("accuracy", "accuracy"), ("format", "format"),
                ("mean_length", "mean length"), ("pref_accuracy_before", "pref acc before"),
                ("pref_accuracy", "pref acc after"), ("margin", "margin")]


def format_table(rows: list[dict]) -> str:
    cols = [(k, h) for k, h in EVAL_COLUMNS if k in ("stage", "accuracy") or any(r.get(k) is not None for r in rows)]
    cells = [[_f(r.get(k), 1 if k == "mean_length" else 3) for k, _ in cols] for r in rows]
    w = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(cols)]
    line = lambda xs: "  ".join(x.ljust(n) for x, n in zip(xs, w)).rstrip()
    return "\n".join([line([h for _, h in cols]), line(["-" * n for n in w])] + [line(c) for c in cells])


# ---- eval ---------------------------------------------------------------------------------------
def _resolve_mix_path(ref: str, run_dir: Path, cfg_source: str | None) -> Path:
    cands = [Path(ref)]
    if cfg_source:
        src = Path(cfg_source)
        cands += [src.resolve().parent.parent / ref, src.resolve().parent / ref]
    for c in cands:
        if c.is_file():
            return c
    raise ReportError(f"eval mix {ref} not found (looked in {', '.join(str(c) for c in cands)}); pass --mix PATH")


class ReportError(RuntimeError):
    """One line: what is missing."""


def eval_run(run_dir: str | Path, stage: str | None = None, eval_mix: str | None = None,
             max_examples: int | None = None, max_new_tokens: int | None = None, batch_size: int | None = None,
             base: bool = False) -> list[dict]:
    """Re-evaluate finished stages (all, or `stage`), rewrite their evals.json; return the table rows.

    Settings default to each stage's `eval:` block as the last `posttrain run` gave it (changing
    it does not retrain, so this is how new eval settings take effect), else as the stage ran;
    `eval_mix` puts every stage on one held-out set. `base` also
    re-evaluates the recipe's base model into the first stage's evals_base.json.
    """
    import torch
    from posttrain.data.mix import resolve_mix
    from posttrain.evaluate import evaluate_model
    from posttrain.model.load import load_model, load_tokenizer
    run_dir, rd = Path(run_dir), RunDir(run_dir)
    names = rd.stage_names()
    if stage is not None and stage not in names:
        raise ReportError(f"stage {stage} of {run_dir} has no finished output (no DONE)"
                          + (f" (stages: {', '.join(names)})" if names else ""))
    todo = [rd.record(n) for n in ([stage] if stage else names)]
    if stage is not None and not todo[0].done:
        raise ReportError(f"stage {stage} of {run_dir} has no finished output (no DONE)")
    todo = [s for s in todo if s.done]
    if not todo:
        raise ReportError(f"{run_dir}: no finished stages (no */DONE)")
    source = rd.source()
    mixes: dict[str, list] = {}

    def rows_for(s: StageRecord):
        ev_cfg = rd.eval_config(s.name)
        ref = eval_mix or ev_cfg.mix
        if not ref:
            return [], ev_cfg
        if ref not in mixes:
            mixes[ref] = resolve_mix(_resolve_mix_path(ref, run_dir, source)).rows
        return mixes[ref][:max_examples if max_examples is not None else ev_cfg.max_examples], ev_cfg

    def run_one(model, tok, ev_cfg, rows, out: Path, label: str) -> dict:
        with torch.no_grad():
            ev = evaluate_model(model, tok, rows, max_new_tokens or ev_cfg.max_new_tokens,
                                batch_size or ev_cfg.batch_size)
        write_json(out, ev)
        log.info("%s: accuracy %.3f, format %.3f, mean length %.1f (n=%d)", label, ev["accuracy"], ev["format"],
                 ev["mean_length"], ev["n"])
        return ev

    m, seed = rd.model_config(), rd.recipe().get("seed", 0)
    if base and stage is None:
        first = rd.record(names[0])
        rows, ev_cfg = rows_for(first)
        if rows and first.done and not first.stage.get("init_from"):
            tok = load_tokenizer(m.tokenizer or m.name, saved_template(first.dir / "model"))
            model = load_model(m.name, m.dtype, tokenizer=tok, seed=seed)
            run_one(model, tok, ev_cfg, rows, first.dir / "evals_base.json", "base")
            del model
    for s in todo:
        rows, ev_cfg = rows_for(s)
        if not rows:
            log.info("%s: no eval mix (stage has none; pass --mix)", s.name)
            continue
        tok = load_tokenizer(str(s.dir / "model"), saved_template(s.dir / "model"))
        model = load_model(s.dir / "model", m.dtype, m.attn_implementation, tokenizer=tok)
        run_one(model, tok, ev_cfg, rows, s.dir / "evals.json", s.name)
        del model
    return eval_rows(run_dir)


# ---- HTML ---------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1150px;margin:24px auto;padding:0 16px;
color:#222}h1{margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child,td.t{text-align:left}img{max-width:100%}
table.exports td{text-align:left}code{background:#f4f4f4;padding:1px 4px}.missing{color:#999}"""


def _cell(c) -> str:
    s = str(c)
    num = s.replace(",", "").replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit() or s == ""
    return f"<td>{html.escape(s)}</td>" if num else f'<td class="t">{html.escape(s)}</td>'


def _html_table(header: list[str], rows: list[list], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{th}</tr>{body}</table>'


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html and return its path."""
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    names = rd.stage_names()
    if not names:
        raise ReportError(f"{run_dir}: not a run directory (no recipe.yaml and no */DONE)")
    recipe = rd.recipe()
    stages = [rd.record(n) for n in names]
    summary = rd.summary()
    times = {s.name: stage_time_tokens(s, summary.get(s.name) if summary.get(s.name, {}).get("action")
                                          != "skipped" else None) for s in stages if s.done}
    evrows = eval_rows(run_dir)
    parts = [f"<h1>Run {html.escape(recipe.get('name') or run_dir.name)}</h1>",
             f'<p class="sub">{html.escape(str(run_dir.resolve()))} &middot; recipe {html.escape(rd.source() or "?")}'
             f" &middot; base model <code>{html.escape(str((recipe.get('model') or {}).get('name', '?')))}</code>"
             f" &middot; template <code>{html.escape(str(recipe.get('chat_template', '?')))}</code>"
             f" &middot; generated {time.strftime('%Y-%m-%d %H:%M')}</p>"]

    rows = []
    for s in stages:
        summ = s.summary
        secs, tokens, tps = times.get(s.name, (None, None, None))
        mix = (s.manifest or {}).get("train") or {}
        rows.append([s.name, s.kind or "", "finished" if s.done else "not run",
                     s.stage.get("init_from") or ("base" if s.done else ""),
                     summ.steps if summ.steps is not None else "", _f(summ.train_loss, 4),
                     _f(secs, 1), f"{int(tokens):,}" if tokens else "", _f(tps, 0),
                     f"{mix.get('name', '')} ({str(mix.get('sha256', ''))[:12]})" if mix else ""])
    parts += ["<h2>Stages</h2>", _html_table(["stage", "kind", "status", "starts from", "steps", "train loss",
                                              "seconds", "tokens", "tokens/s", "train mix (sha256)"], rows)]

    plots = dict(run_plots(stages, evrows, times))
    img = lambda title: f'<img alt="{html.escape(title)}" src="data:image/png;base64,{plots[title]}">'
    parts.append("<h2>Held-out eval across stages</h2>")
    if evrows:
        cols = [(k, h) for k, h in EVAL_COLUMNS if k in ("stage", "accuracy") or any(r.get(k) is not None for r in evrows)]
        parts.append(_html_table([h for _, h in cols], [[_f(r.get(k), 1 if k == "mean_length" else 3) for k, _ in cols]
                                                         for r in evrows], "evals"))
        parts.append('<p class="sub">Greedy decoding; accuracy by the math verifier, format by the format reward. '
                     "Preference accuracy on the held-out pairs before/after DPO.</p>")
        if EVAL_PLOT in plots:
            parts.append(img(EVAL_PLOT))
    else:
        parts.append('<p class="missing">No evals yet: run <code>posttrain eval RUN</code>.</p>')
    for title in plots:
        if title != EVAL_PLOT:
            parts += [f"<h2>{html.escape(title)}</h2>", img(title)]

    from posttrain.harness import suite_html  # issue 20: benchmark suites, when `posttrain eval --suite` ran
    parts.append(suite_html(run_dir))
    parts.append("<h2>Exports</h2>")
    exports = sorted(p for p in rd.exports_dir.glob("*") if p.is_dir() and not p.name.startswith("."))
    if exports:
        er = []
        for p in exports:
            info = read_json(p / "export.json") or {}
            v = info.get("verification") or {}
            er.append(f'<tr><td><a href="exports/{html.escape(p.name)}/">{html.escape(p.name)}</a></td>'
                      f"<td>{html.escape(str(info.get('stage', '?')))}</td><td>{html.escape(str(info.get('kind', '?')))}</td>"
                      f"<td>{_f(v.get('max_abs_logit_diff'), 1) if v.get('max_abs_logit_diff') is None else format(v['max_abs_logit_diff'], '.1e')}</td>"
                      f'<td><a href="exports/{html.escape(p.name)}/README.md">model card</a></td>'
                      f"<td><code>vllm serve {html.escape(str(p.resolve()))}</code></td></tr>")
        parts.append('<table class="exports"><tr><th>export</th><th>stage</th><th>kind</th><th>max |logit diff|</th><th>card</th>'
                     "<th>serve</th></tr>" + "".join(er) + "</table>")
    else:
        parts.append('<p class="missing">No exports yet: <code>posttrain export RUN --stage S --as think</code>.</p>')

    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>posttrain report: {html.escape(run_dir.name)}"
           f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    return write_text(rd.report_file, doc)


# ---- CLI ----------------------------------------------------------------------------------------
def build_eval_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="posttrain eval")
    ap.add_argument("run", help="run directory (checkpoints/NAME)")
    ap.add_argument("--stage", help="only this stage (default: every finished stage)")
    ap.add_argument("--mix", dest="eval_mix", help="eval mix for every stage (default: each stage's eval.mix)")
    ap.add_argument("--max-examples", type=int, help="examples per stage (default: the stage's eval.max_examples)")
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--base", action="store_true", help="also re-evaluate the base model")
    return ap


def build_report_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="posttrain report")
    ap.add_argument("run", help="run directory (checkpoints/NAME)")
    return ap


def cmd_eval(args) -> int:
    try:
        rows = eval_run(args.run, args.stage, args.eval_mix, args.max_examples, args.max_new_tokens,
                        args.batch_size, args.base)
    except ReportError as e:
        print(f"posttrain: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 0


def cmd_report(args) -> int:
    try:
        out = write_report(args.run)
    except ReportError as e:
        print(f"posttrain: error: {e}", file=sys.stderr)
        return 2
    print(format_table(eval_rows(Path(args.run))))
    print(f"report: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m posttrain.report eval RUN ...` / `python -m posttrain.report report RUN`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(prog="python -m posttrain.report")
    sub = ap.add_subparsers(dest="cmd", required=True)
    build_eval_parser(sub.add_parser("eval")).set_defaults(fn=cmd_eval)
    build_report_parser(sub.add_parser("report")).set_defaults(fn=cmd_report)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
