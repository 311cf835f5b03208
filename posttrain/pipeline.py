"""Runs a recipe's stages in order; decides what to skip, resume or rerun; never leaves a
half-written stage that looks done.

Each stage attempt has a key: a hash of everything that decides its output (the stage's
resolved settings, the base model settings, the chat template, the data-mix content hashes,
and the key of the stage it starts from). An attempt trains in `RUN/.work/STAGE-KEY/`, so
resuming after a kill picks up that attempt's own trainer checkpoints and a changed setting
can never resume from a stale one. When the attempt has written its model, config, manifest,
metrics and evals, it writes `DONE` (holding the key) and only then replaces `RUN/STAGE/` by
renames. A rerun skips a stage whose `DONE` key matches; a changed key reruns it, and since
keys chain, every stage after it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from posttrain.data.mix import ResolvedMix, SourceUnavailable
from posttrain.data.validate import reason_counts, resolve_for
from posttrain.data.templates import resolve_template
from posttrain.recipe import Recipe, resolve_file

log = logging.getLogger("posttrain")
# Settings that only watch a stage (evals during RL) and never change its model: not in its key.
OBSERVE_ONLY = ("local_eval_every", "local_eval_suite", "local_eval_examples")
KEY_VERSION = 1  # bump when a code change alters what a stage produces from the same inputs


class PipelineError(RuntimeError):
    """A run that cannot proceed (missing inputs); one line saying what to do."""


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_done(stage_dir: Path) -> dict | None:
    p = stage_dir / "DONE"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:
        return None


@dataclass
class StagePlan:
    name: str
    kind: str
    key: str
    action: str
    """run | resume | skip | blocked"""
    init_from: str | None
    rows: int | None
    """None: the data mix could not be resolved (dry runs only)"""
    note: str = ""


class Pipeline:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.out = recipe.output_dir
        self.template = resolve_template(str(resolve_file(recipe.cfg.chat_template, recipe))
                                         if recipe.cfg.chat_template.endswith((".jinja", ".j2"))
                                         else recipe.cfg.chat_template, recipe.cfg.chat_template_system)
        self._mixes: dict[tuple, ResolvedMix] = {}

    # ---- inputs -------------------------------------------------------------------------------
    def mix(self, ref: str | None, kind: str, who: str, rewards: list | None = None,
            needs_truth: bool = False) -> ResolvedMix | None:
        """A data mix resolved and validated for what reads it (posttrain/data/validate.py)."""
        if ref is None:
            return None
        k = (ref, kind, json.dumps(rewards, sort_keys=True, default=str), needs_truth)
        if k not in self._mixes:
            self._mixes[k] = resolve_for(resolve_file(ref, self.recipe), kind, who, rewards, needs_truth)
        return self._mixes[k]

    def train_mix(self, name: str) -> ResolvedMix:
        st = self.recipe.stages[name]
        return self.mix(st.mix, st.kind, f"stages.{name}.mix", getattr(st, "rewards", None),
                        needs_truth=getattr(st, "rejected_from_policy", False))

    def eval_mix(self, name: str) -> ResolvedMix | None:
        """Held-out rows are scored against their ground_truth (posttrain/evaluate.py)."""
        return self.mix(self.recipe.stages[name].eval.mix, "eval", f"stages.{name}.eval.mix", needs_truth=True)

    def validate(self, name: str) -> str:
        """Every mix a stage reads, resolved and checked before any model loads; returns a note
        on rows that skip_invalid dropped, per reason."""
        st = self.recipe.stages[name]
        mixes = [self.train_mix(name), self.eval_mix(name)]
        if getattr(st, "eval_pairs", None):
            mixes.append(self.mix(st.eval_pairs, "dpo", f"stages.{name}.eval_pairs"))
        notes = []
        for m in filter(None, mixes):
            counts = reason_counts(m)
            if counts:
                notes.append(f"{m.manifest['name']}: dropped {sum(counts.values())} invalid rows ("
                             + "; ".join(f"{n}: {k}" for k, n in sorted(counts.items(), key=lambda x: -x[1])) + ")")
        return "; ".join(notes)

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def key(self, name: str, parent_key: str | None) -> str:
        st = self.recipe.stages[name]
        m, e = self.train_mix(name), self.eval_mix(name)
        return _sha({
            "v": KEY_VERSION, "stage": {k: v for k, v in self.recipe.stage_dict(name).items() if k not in OBSERVE_ONLY},
            "model": OmegaConf.to_container(OmegaConf.structured(self.recipe.cfg.model)),
            "seed": self.recipe.cfg.seed, "template": self.template,
            "mix": m.manifest["sha256"], "eval": e.manifest["sha256"] if e else None, "parent": parent_key,
        })[:16]

    def status(self, name: str, key: str) -> str:
        done = read_done(self.stage_dir(name))
        if done and done.get("key") == key:
            return "done"
        work = self.out / ".work" / f"{name}-{key}"
        if (work / "DONE").is_file() or any((work / "trainer").glob("checkpoint-*")):
            return "partial"
        return "stale" if done else "pending"

    # ---- planning -----------------------------------------------------------------------------
    def plan(self, only: str | None = None, start: str | None = None, force: bool = False,
             dry: bool = False) -> list[StagePlan]:
        """What each selected stage would do. dry: a data mix that cannot be resolved here (a hub
        dataset offline) leaves that stage's key and rows unknown instead of failing."""
        names = list(self.recipe.stages)
        for flag, s in (("--stage", only), ("--from", start)):
            if s is not None and s not in names:
                raise PipelineError(f"{self.recipe.source}: {flag} {s}: no such stage (stages: {', '.join(names)})")
        selected = [only] if only else names[names.index(start):] if start else names
        keys: dict[str, str] = {}
        plans = []
        for n in names:
            st = self.recipe.stages[n]
            parent_key = None
            if st.init_from:
                parent_key = keys[st.init_from]
                if st.init_from not in selected or n not in selected:
                    # The input is whatever finished output exists, not what the recipe would make now.
                    done = read_done(self.stage_dir(st.init_from))
                    parent_key = done["key"] if done else parent_key
            note, rows = "", None
            try:
                note = self.validate(n)
                k = keys[n] = self.key(n, parent_key)
                rows = len(self.train_mix(n).rows)
            except SourceUnavailable as e:
                if not dry:
                    raise
                k = keys[n] = "unresolved"
                note = f"data not resolved here ({e})"
            if n not in selected:
                continue
            status = self.status(n, k)
            action = {"done": "skip", "partial": "resume"}.get(status, "run")
            if force and action == "skip":
                action = "run"
            if st.init_from and st.init_from not in selected:
                pd = read_done(self.stage_dir(st.init_from))
                if pd is None:
                    action, note = "blocked", (f"starts from '{st.init_from}', which has no finished output in "
                                               f"{self.stage_dir(st.init_from)}: run `posttrain run {self.recipe.source} "
                                               f"--stage {st.init_from}` first")
                elif pd["key"] != keys[st.init_from]:
                    note = "; ".join(filter(None, [note, f"'{st.init_from}' output is from different settings "
                                                                  "than the recipe now gives; using it as is"]))
            plans.append(StagePlan(n, st.kind, k, action, st.init_from, rows, note))
        return plans

    # ---- running ------------------------------------------------------------------------------
    def run(self, only: str | None = None, start: str | None = None, force: bool = False) -> list[dict]:
        plans = self.plan(only, start, force)
        blocked = [p for p in plans if p.action == "blocked"]
        if blocked:
            raise PipelineError(f"stage '{blocked[0].name}' {blocked[0].note}")
        from accelerate import PartialState
        main = PartialState().is_main_process
        self.out.mkdir(parents=True, exist_ok=True)
        if main:
            for trash in (self.out / ".work").glob(".old-*"):  # a swap killed between its renames
                shutil.rmtree(trash, ignore_errors=True)
            (self.out / "recipe.yaml").write_text(self._recipe_yaml())
        results = []
        for p in plans:
            if p.note:
                log.warning("%s: %s", p.name, p.note)
            if p.action == "skip":
                done = read_done(self.stage_dir(p.name))
                log.info("%s: up to date (key %s), skipped", p.name, p.key)
                results.append({"stage": p.name, "action": "skipped", **done.get("summary", {})})
                continue
            t0 = time.time()
            summary = self._run_stage(p)
            results.append({"stage": p.name, "action": "resumed" if p.action == "resume" else "ran",
                            "seconds": round(time.time() - t0, 1), **summary})
        if not main:
            return results
        (self.out / "summary.json").write_text(json.dumps(results, indent=2))
        from posttrain.export import run_exports
        from posttrain.report import write_report
        ready = [e for e in self.recipe.cfg.exports if read_done(self.stage_dir(e.stage))]
        if ready:
            for path in run_exports(self.out, ready) or []:
                log.info("export ready: %s", path)
        self._benchmarks()
        log.info("report: %s", write_report(self.out))
        return results

    def _benchmarks(self) -> None:
        """The recipe's `benchmarks:` suites (off unless listed), on what has finished; cached per model."""
        for b in self.recipe.cfg.benchmarks:
            import torch
            from posttrain.harness import format_summary, run_eval
            from posttrain.recipe import suite_ref
            if b.after != "exports" and not read_done(self.stage_dir(b.after)):
                continue
            if b.after == "exports" and not any((self.out / "exports").glob("*/export.json")):
                continue
            cuda = torch.cuda.is_available()
            judge = {"base_url": b.judge_url, "model": b.judge_model} if b.judge_url else None
            summary = run_eval(self.out, suite_ref(b.suite, Path(self.recipe.source)),
                               None if b.after == "exports" else b.after, b.backend or ("vllm" if cuda else "hf"),
                               b.data_dir, judge, dtype="bfloat16" if cuda else "float32")
            log.info("benchmark suite %s after %s:\n%s", b.suite, b.after, format_summary(summary))

    def _run_stage(self, p: StagePlan) -> dict:
        from posttrain.stages.common import StageContext
        st = self.recipe.stages[p.name]
        work = self.out / ".work" / f"{p.name}-{p.key}"
        if (work / "DONE").is_file():  # finished but the swap was interrupted
            self._swap_in(p.name, work)
            return read_done(self.stage_dir(p.name)).get("summary", {})
        work.mkdir(parents=True, exist_ok=True)
        mix, ev = self.train_mix(p.name), self.eval_mix(p.name)
        ctx = StageContext(recipe=self.recipe, name=p.name, stage=st, work_dir=work,
                           init_dir=self.stage_dir(st.init_from) / "model" if st.init_from else None,
                           chat_template=self.template, mix=mix, eval_rows=ev.rows if ev else [])
        log.info("%s (%s): %s, key %s, %d rows from %s", p.name, p.kind,
                 "resuming" if p.action == "resume" else "starting", p.key, len(mix.rows), st.mix)
        t0 = time.time()
        summary = _stage_module(p.kind).run(ctx)
        summary["seconds"] = round(time.time() - t0, 1)
        # Under `accelerate launch` every process runs the stage; only the main one finishes it.
        from accelerate import PartialState
        state = PartialState()
        if not state.is_main_process:
            state.wait_for_everyone()
            return summary
        (work / "config.yaml").write_text(self._recipe_yaml(p.name))
        (work / "manifest.json").write_text(json.dumps({"train": mix.manifest, "eval": ev.manifest if ev else None},
                                                       indent=2))
        shutil.rmtree(work / "trainer", ignore_errors=True)  # optimizer states: only needed to resume
        from posttrain.model.load import usual_file_modes
        usual_file_modes(work)
        tmp = work / "DONE.tmp"
        tmp.write_text(json.dumps({"key": p.key, "stage": p.name, "kind": p.kind, "finished": time.time(),
                                   "summary": summary}, indent=2, default=str))
        tmp.replace(work / "DONE")
        self._swap_in(p.name, work)
        state.wait_for_everyone()
        return summary

    def _swap_in(self, name: str, work: Path) -> None:
        final = self.stage_dir(name)
        trash = self.out / ".work" / f".old-{name}-{time.time_ns()}"
        if final.exists():
            final.rename(trash)
        work.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
        for stale in (self.out / ".work").glob(f"{name}-*"):  # attempts of other settings
            shutil.rmtree(stale, ignore_errors=True)

    def _recipe_yaml(self, stage: str | None = None) -> str:
        r = self.recipe
        d = OmegaConf.to_container(OmegaConf.structured(r.cfg))
        d["stages"] = {n: r.stage_dict(n) for n in r.stages if stage in (None, n)}
        return f"# resolved from {r.source}\n" + OmegaConf.to_yaml(d)


def _stage_module(kind: str):
    import importlib
    return importlib.import_module({"sft": "posttrain.stages.sft", "dpo": "posttrain.stages.dpo",
                                    "grpo": "posttrain.stages.rl"}[kind])
