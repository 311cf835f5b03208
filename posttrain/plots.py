"""The run report's figures (posttrain.report embeds them as base64 PNG): loss per stage, each stage
kind's own figure (posttrain.stages.registry), the held-out eval across stages, time and throughput."""

from __future__ import annotations

import base64
import io
import math

from posttrain.rundir import StageRecord

EVAL_PLOT = "Held-out accuracy and format across stages"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _series(metrics: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in metrics if isinstance(r.get(key), (int, float)) and "step" in r
           and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _stage_plot(s: StageRecord, plot):
    """A stage kind's own figure (posttrain.stages.registry): its keys one panel each, or every metric
    with its prefix on one panel; None when the stage logged none of them."""
    import matplotlib.pyplot as plt
    if plot.prefix is not None:
        keys = sorted({k for r in s.metrics for k in r if k.startswith(plot.prefix) and not k.endswith("_std")
                       and isinstance(r[k], (int, float))})
        if not keys:
            return None
        fig, ax = plt.subplots(figsize=(7, 3.4))
        for k in keys:
            ax.plot(*_series(s.metrics, k), marker=".", label=k)
        ax.set_title(f"{s.name}: {plot.prefix}s")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return fig
    keys = [k for k in plot.keys if _series(s.metrics, k)[0]]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(*_series(s.metrics, k), marker=".")
        ax.set_title(f"{s.name}: {k.split('/')[-1]} (train batches)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return fig


def run_plots(stages: list[StageRecord], evrows: list[dict], times: dict) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = []
    done = [s for s in stages if s.done]
    with_loss = [s for s in done if _series(s.metrics, "loss")[0]]
    if with_loss:
        fig, axes = plt.subplots(1, len(with_loss), figsize=(4.2 * len(with_loss), 3.2), squeeze=False)
        for ax, s in zip(axes[0], with_loss):
            ax.plot(*_series(s.metrics, "loss"), marker=".", label="train loss")
            x, y = _series(s.metrics, "eval_loss")
            if x:
                ax.plot(x, y, "o", label="eval loss")
            ax.set_title(f"{s.name} ({s.kind})")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0][0].set_ylabel("loss")
        out.append(("Training loss per stage", _png(fig)))
    from posttrain.stages.registry import STAGES
    for s in done:
        plot = STAGES[s.kind].plot if s.kind in STAGES else None
        if plot is not None and (fig := _stage_plot(s, plot)) is not None:
            out.append((f"{plot.title}: {s.name}", _png(fig)))
    ev = [r for r in evrows if r.get("accuracy") is not None]
    if ev:
        fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(ev) + 2), 3.2))
        w = 0.38
        xs = range(len(ev))
        for i, (k, lab) in enumerate((("accuracy", "accuracy"), ("format", "format"))):
            vals = [r.get(k) or 0 for r in ev]
            bars = ax.bar([x + (i - 0.5) * w for x in xs], vals, w, label=lab)
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(list(xs), [r["stage"] for r in ev])
        ax.set_ylim(0, 1.12)
        ax.set_title("Held-out eval: base -> each stage")
        ax.legend(fontsize=8, loc="upper left")
        out.append((EVAL_PLOT, _png(fig)))
    tt = [(n, t) for n, t in times.items() if t[0] is not None]
    if tt:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        axes[0].bar([n for n, _ in tt], [t[0] for _, t in tt], color="tab:gray")
        axes[0].set_title("wall time (s)")
        tps = [(n, t[2]) for n, t in times.items() if t[2] is not None]
        axes[1].bar([n for n, _ in tps], [v for _, v in tps], color="tab:green")
        axes[1].set_title("mean training tokens/s")
        out.append(("Time and throughput per stage", _png(fig)))
    return out
