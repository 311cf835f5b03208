"""The run directory: its layout, and the one place that writes and reads it back.

    RUN/recipe.yaml            the resolved recipe, first line `# resolved from SOURCE`
    RUN/summary.json           what the last `posttrain run` did, one StageResult a stage
    RUN/STAGE/DONE             StageDone (key, kind, finished, summary), written last
    RUN/STAGE/config.yaml      the resolved recipe holding only this stage
    RUN/STAGE/manifest.json    train and eval data-mix manifests (sources, counts, hashes)
    RUN/STAGE/model/           HF model and tokenizer (its chat template is the trained one)
    RUN/STAGE/metrics.jsonl    every logged step; evals.json, evals_base.json: held-out evals
    RUN/.work/STAGE-KEY/       an attempt; renamed to RUN/STAGE once its DONE is written
    RUN/.cache/STAGE/          caches that outlive attempts (DPO reference logprobs)
    RUN/exports/KIND/          verified exports (export.json), RUN/report.html

The pipeline, the stages, export, report, the CLI, benchmarks/stage_metrics.py and the tests'
fake runs all go through this module; it imports nothing from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESOLVED_FROM = "# resolved from "
# Names inside a stage dir (and an attempt dir, which becomes one).
MODEL, METRICS, EVALS, EVALS_BASE, TRAINER = "model", "metrics.jsonl", "evals.json", "evals_base.json", "trainer"


# ---- atomic writes ------------------------------------------------------------------------------
def write_text(path: Path, text: str) -> Path:
    """Write beside, then rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str))


def replace_dir(new: Path, final: Path) -> None:
    """Put the finished directory `new` at `final`; an old `final` is removed only afterwards,
    so a crash leaves either the old or the new one in place, never neither."""
    trash = None
    if final.exists():
        trash = final.parent / f".{final.name}.old-{time.time_ns()}"
        final.rename(trash)
    new.rename(final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text()) if Path(path).is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def read_yaml(path: Path) -> dict:
    if not Path(path).is_file():
        return {}
    from omegaconf import OmegaConf
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    except Exception:  # a hand-edited or truncated file must not break a report
        return {}


def saved_template(model_dir: Path) -> str:
    """The chat template a stage trained with, as saved beside its model ('' if none)."""
    p = Path(model_dir) / "chat_template.jinja"
    if p.is_file():
        return p.read_text()
    return (read_json(Path(model_dir) / "tokenizer_config.json") or {}).get("chat_template") or ""


# ---- what a stage leaves ------------------------------------------------------------------------
@dataclass
class StageSummary:
    """A stage's headline figures (DONE's `summary`); None: the stage does not measure it."""
    steps: int | None = None
    """Optimizer steps taken."""
    train_loss: float | None = None
    """The trainer's mean training loss."""
    eval_loss: float | None = None
    """SFT: loss on the held-out eval rows after training."""
    accuracy: float | None = None
    """Held-out task accuracy after the stage (greedy, `reward.math`)."""
    base_accuracy: float | None = None
    """The base model's, measured by the first stage."""
    pref_accuracy_before: float | None = None
    """DPO: held-out preference accuracy (eval_pairs) before training."""
    pref_accuracy: float | None = None
    """DPO: the same after training."""
    margin_before: float | None = None
    """DPO: mean held-out reward margin (chosen - rejected) before training."""
    margin: float | None = None
    """DPO: the same after training."""
    reward_last: float | None = None
    """GRPO: the last logged mean reward."""
    prompt_queue: dict | None = None
    """GRPO: the main process's prompt-queue position (epoch, pos, skipped)."""
    seconds: float | None = None
    """Wall time of the stage's run function."""
    extra: dict = field(default_factory=dict)
    """Figures a stage kind adds that no reader relies on."""

    @classmethod
    def from_dict(cls, d: dict | None) -> StageSummary:
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: d.pop(k) for k in list(d) if k in names}, extra=d)

    def to_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra" and v is not None}
        return {**d, **self.extra}


@dataclass
class StageDone:
    """RUN/STAGE/DONE: the stage finished with these settings (key)."""
    key: str
    stage: str
    kind: str
    finished: float = 0.0
    summary: StageSummary = field(default_factory=StageSummary)
    key_version: int = 1
    """The stage-key formula that made `key` (posttrain.pipeline.KEY_VERSION)."""

    def to_dict(self) -> dict:
        return {"key": self.key, "stage": self.stage, "kind": self.kind, "finished": self.finished,
                "key_version": self.key_version, "summary": self.summary.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> StageDone:
        return cls(key=d["key"], stage=d.get("stage", ""), kind=d.get("kind", ""), finished=d.get("finished", 0.0),
                   summary=StageSummary.from_dict(d.get("summary")), key_version=d.get("key_version", 1))


@dataclass
class StageResult:
    """What one `posttrain run` did with a stage (RUN/summary.json)."""
    stage: str
    action: str
    """ran | resumed | skipped"""
    summary: StageSummary
    seconds: float | None = None

    def to_dict(self) -> dict:
        return {"stage": self.stage, "action": self.action,
                **({"seconds": self.seconds} if self.seconds is not None else {}),
                **{k: v for k, v in self.summary.to_dict().items() if k != "seconds"}}


def read_done(stage_dir: Path) -> StageDone | None:
    d = read_json(Path(stage_dir) / "DONE")
    return StageDone.from_dict(d) if isinstance(d, dict) and "key" in d else None


@dataclass
class StageRecord:
    """Everything a stage dir holds, parsed; missing parts are None / empty."""
    name: str
    dir: Path
    done: StageDone | None
    kind: str | None
    config: dict
    """RUN/STAGE/config.yaml"""
    stage: dict
    """The stage's settings: from its config.yaml, else from the run's recipe.yaml."""
    manifest: dict | None
    evals: dict | None
    evals_base: dict | None
    metrics: list[dict]

    @property
    def summary(self) -> StageSummary:
        return self.done.summary if self.done else StageSummary()



# ---- the run ------------------------------------------------------------------------------------
class RunDir:
    """Paths of one run, and readers of what its stages left."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    recipe_file = property(lambda self: self.root / "recipe.yaml")
    summary_file = property(lambda self: self.root / "summary.json")
    report_file = property(lambda self: self.root / "report.html")
    exports_dir = property(lambda self: self.root / "exports")

    def stage(self, name: str) -> Path:
        return self.root / name

    def work(self, name: str, key: str) -> Path:
        """One attempt at a stage with settings `key`: its trainer checkpoints and outputs."""
        return self.root / ".work" / f"{name}-{key}"

    def cache(self, name: str) -> Path:
        return self.root / ".cache" / name

    def export(self, kind: str) -> Path:
        return self.exports_dir / kind

    def done(self, name: str) -> StageDone | None:
        return read_done(self.stage(name))

    def finished(self) -> list[str]:
        """Stages with a DONE, oldest first."""
        dirs = [p.parent for p in self.root.glob("*/DONE")] if self.root.is_dir() else []
        return [d.name for d in sorted(dirs, key=lambda d: (read_done(d) or StageDone("", "", "")).finished)]

    # -- writing (the pipeline) --
    def write_recipe(self, text: str, source: str, path: Path | None = None) -> Path:
        """The resolved recipe (RUN/recipe.yaml, or a stage's config.yaml), naming where it came from."""
        return write_text(path or self.recipe_file, f"{RESOLVED_FROM}{source}\n{text}")

    def write_done(self, attempt: Path, done: StageDone) -> None:
        write_json(attempt / "DONE", done.to_dict())

    def write_summary(self, results: list[StageResult]) -> None:
        write_json(self.summary_file, [r.to_dict() for r in results])

    def rekey(self, name: str, key: str, key_version: int) -> None:
        """A finished stage whose key formula changed but whose weights would not: new key in its DONE
        and in the exports made from it (so they are not remade either)."""
        done = self.done(name)
        old = done.key
        done.key, done.key_version = key, key_version
        self.write_done(self.stage(name), done)
        for info_file in self.exports_dir.glob("*/export.json"):
            info = read_json(info_file) or {}
            if info.get("stage") == name and info.get("stage_key") == old:
                write_json(info_file, {**info, "stage_key": key})

    def swap_in(self, name: str, attempt: Path) -> None:
        """A finished attempt becomes RUN/STAGE; attempts at other settings are dropped."""
        replace_dir(attempt, self.stage(name))
        for stale in (self.root / ".work").glob(f"{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)

    # -- reading --
    def recipe(self) -> dict:
        return read_yaml(self.recipe_file)

    def eval_config(self, name: str):
        """A stage's `eval:` block as the recipe's EvalConfig (its defaults fill what is absent): as the
        last `posttrain run` gave it (eval settings change without retraining), else as the stage ran."""
        from posttrain.recipe import EvalConfig
        latest = ((self.recipe().get("stages") or {}).get(name) or {}).get("eval")
        block = latest if latest is not None else self.record(name).stage.get("eval") or {}
        names = {f.name for f in dataclasses.fields(EvalConfig)}
        return EvalConfig(**{k: v for k, v in block.items() if k in names})

    def model_config(self):
        """The run's `model:` block as the recipe's ModelConfig (its defaults fill what is absent)."""
        from posttrain.recipe import ModelConfig
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in (self.recipe().get("model") or {}).items() if k in names})

    def source(self) -> str | None:
        """The recipe file the run was made from (the first line of recipe.yaml)."""
        if self.recipe_file.is_file():
            first = self.recipe_file.read_text().splitlines()[:1]
            if first and first[0].startswith(RESOLVED_FROM):
                return first[0][len(RESOLVED_FROM):].strip()
        return None

    def summary(self) -> dict[str, dict]:
        """RUN/summary.json by stage name."""
        return {r.get("stage"): r for r in (read_json(self.summary_file) or []) if isinstance(r, dict)}

    def stage_names(self) -> list[str]:
        """Stages in recipe order (recipe.yaml); finished ones not in it follow, oldest first."""
        names = list((self.recipe().get("stages") or {}).keys())
        return names + [n for n in self.finished() if n not in names]

    def record(self, name: str) -> StageRecord:
        from posttrain.metrics import read_metrics
        d = self.stage(name)
        done = read_done(d)
        cfg = read_yaml(d / "config.yaml")
        st = (cfg.get("stages") or {}).get(name) or (self.recipe().get("stages") or {}).get(name) or {}
        return StageRecord(name=name, dir=d, done=done, kind=(done.kind if done else None) or st.get("kind"),
                           config=cfg, stage=st, manifest=read_json(d / "manifest.json"),
                           evals=read_json(d / EVALS), evals_base=read_json(d / EVALS_BASE),
                           metrics=read_metrics(d / METRICS) if done else [])

    def chain(self, name: str) -> list[str]:
        """The stages a model went through, first to `name`, following init_from."""
        stages = self.recipe().get("stages") or {}
        chain, cur = [], name
        while cur is not None and cur not in chain:
            chain.append(cur)
            cur = (stages.get(cur) or self.record(cur).stage or {}).get("init_from")
        return chain[::-1]

    def metrics_file(self, name: str) -> Path | None:
        """A finished stage's metrics.jsonl, else its newest attempt's (a stage cut short)."""
        done = self.stage(name) / METRICS
        tries = sorted((self.root / ".work").glob(f"{name}-*/{METRICS}"), key=lambda p: p.stat().st_mtime)
        return done if done.is_file() else (tries[-1] if tries else None)
