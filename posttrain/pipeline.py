"""Runs a recipe's stages in order; decides what to skip, resume or rerun; never leaves a
half-written stage that looks done. Exports and the report are the CLI's next step
(`posttrain.cli.finish_run`), outside the training: a failed export never fails a trained stage.

Each stage attempt has a key: a hash of everything that decides its weights (the stage's
settings less eval, logging and save ones (`recipe.weight_settings`), the base model settings,
the seed, the chat template, the training data's content hash, and the key of the stage it
starts from). Changing how a stage is evaluated, logged or checkpointed never retrains it;
`posttrain eval RUN` re-evaluates. An attempt trains in `RUN/.work/STAGE-KEY/`, so
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
from posttrain.launch import is_main_process
from posttrain.recipe import Recipe, resolve_file, weight_settings
from posttrain.stages.registry import stage_kind
from posttrain.rundir import TRAINER, RunDir, StageDone, StageResult, StageSummary, read_done, write_json

log = logging.getLogger("posttrain")
# v1 (before this module's v2) also hashed eval, logging and save settings and the eval mix. A
# finished stage with a v1 DONE whose key the current recipe still gives is done: its DONE is
# rewritten with the v2 key on the next run instead of retraining it.
KEY_VERSION = 2  # bump when a code change alters what a stage produces from the same inputs
V1_LEFT_OUT = ("local_eval_every", "local_eval_suite", "local_eval_examples")  # v1's OBSERVE_ONLY


class PipelineError(RuntimeError):
    """A run that cannot proceed (missing inputs); one line saying what to do."""


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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
    legacy_key: str | None = None
    """The v1 key the same settings had; a DONE holding it is done (rekeyed when run)."""


class Pipeline:
    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.out = recipe.output_dir
        self.run_dir = RunDir(self.out)
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
        return self.run_dir.stage(name)

    def key(self, name: str, parent_key: str | None, version: int = KEY_VERSION) -> str:
        st = self.recipe.stages[name]
        what = {"v": version, "stage": weight_settings(st),
                "model": OmegaConf.to_container(OmegaConf.structured(self.recipe.cfg.model)),
                "seed": self.recipe.cfg.seed, "template": self.template,
                "mix": self.train_mix(name).manifest["sha256"], "parent": parent_key}
        if version == 1:  # what v1 hashed too, to recognise stages finished before v2
            e = self.eval_mix(name)
            what.update(stage={k: v for k, v in self.recipe.stage_dict(name).items() if k not in V1_LEFT_OUT},
                        eval=e.manifest["sha256"] if e else None)
        return _sha(what)[:16]

    def status(self, name: str, key: str, legacy_key: str | None = None) -> str:
        done = read_done(self.stage_dir(name))
        if done and (done.key == key or (done.key_version == 1 and done.key == legacy_key)):
            return "done"
        work = self.run_dir.work(name, key)
        if (work / "DONE").is_file() or any((work / TRAINER).glob("checkpoint-*")):
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
        legacy: dict[str, str] = {}
        plans = []
        for n in names:
            st = self.recipe.stages[n]
            parent_key = parent_legacy = None
            if st.init_from:
                parent_key, parent_legacy = keys[st.init_from], legacy[st.init_from]
                if st.init_from not in selected or n not in selected:
                    # The input is whatever finished output exists, not what the recipe would make now.
                    done = read_done(self.stage_dir(st.init_from))
                    if done and done.key not in (parent_key, parent_legacy):
                        parent_key = parent_legacy = done.key
            note, rows = "", None
            try:
                note = self.validate(n)
                k = keys[n] = self.key(n, parent_key)
                legacy[n] = self.key(n, parent_legacy, version=1)
                rows = len(self.train_mix(n).rows)
            except SourceUnavailable as e:
                if not dry:
                    raise
                k = keys[n] = legacy[n] = "unresolved"
                note = f"data not resolved here ({e})"
            if n not in selected:
                continue
            status = self.status(n, k, legacy[n])
            action = {"done": "skip", "partial": "resume"}.get(status, "run")
            if force and action == "skip":
                action = "run"
            if st.init_from and st.init_from not in selected:
                pd = read_done(self.stage_dir(st.init_from))
                if pd is None:
                    action, note = "blocked", (f"starts from '{st.init_from}', which has no finished output in "
                                               f"{self.stage_dir(st.init_from)}: run `posttrain run {self.recipe.source} "
                                               f"--stage {st.init_from}` first")
                elif pd.key not in (keys[st.init_from], legacy[st.init_from]):
                    note = "; ".join(filter(None, [note, f"'{st.init_from}' output is from different settings "
                                                                  "than the recipe now gives; using it as is"]))
            plans.append(StagePlan(n, st.kind, k, action, st.init_from, rows, note, legacy[n]))
        return plans

    # ---- running ------------------------------------------------------------------------------
    def run(self, only: str | None = None, start: str | None = None, force: bool = False) -> list[StageResult]:
        plans = self.plan(only, start, force)
        blocked = [p for p in plans if p.action == "blocked"]
        if blocked:
            raise PipelineError(f"stage '{blocked[0].name}' {blocked[0].note}")
        main = is_main_process()
        self.out.mkdir(parents=True, exist_ok=True)
        if main:
            for trash in self.out.glob(".*.old-*"):  # a stage swap killed between its renames
                shutil.rmtree(trash, ignore_errors=True)
            self.run_dir.write_recipe(self._recipe_yaml(), self.recipe.source)
        results = []
        for p in plans:
            if p.note:
                log.warning("%s: %s", p.name, p.note)
            if p.action == "skip":
                done = self.run_dir.done(p.name)
                if main and done.key != p.key:  # a v1 DONE of the same settings
                    self.run_dir.rekey(p.name, p.key, KEY_VERSION)
                    log.info("%s: finished before stage keys v%d; DONE rekeyed %s -> %s", p.name, KEY_VERSION,
                             done.key, p.key)
                log.info("%s: up to date (key %s), skipped", p.name, p.key)
                if self.run_dir.record(p.name).stage.get("eval") != self.recipe.stage_dict(p.name)["eval"]:
                    log.info("%s: eval settings changed; they do not change the weights, so the stage is not "
                             "rerun: `posttrain eval %s --stage %s` re-evaluates it with them", p.name, self.out, p.name)
                results.append(StageResult(p.name, "skipped", self.run_dir.done(p.name).summary))
                continue
            t0 = time.time()
            summary = self._run_stage(p)
            results.append(StageResult(p.name, "resumed" if p.action == "resume" else "ran", summary,
                                       round(time.time() - t0, 1)))
        if main:
            self.run_dir.write_summary(results)
        return results

    def _run_stage(self, p: StagePlan) -> StageSummary:
        from posttrain.stages.common import StageContext
        st = self.recipe.stages[p.name]
        work = self.run_dir.work(p.name, p.key)
        if (work / "DONE").is_file():  # finished but the swap was interrupted
            self.run_dir.swap_in(p.name, work)
            return self.run_dir.done(p.name).summary
        work.mkdir(parents=True, exist_ok=True)
        mix, ev = self.train_mix(p.name), self.eval_mix(p.name)
        self._memory_preflight(p.name, st)
        ctx = StageContext(recipe=self.recipe, name=p.name, stage=st, work_dir=work,
                           init_dir=self.stage_dir(st.init_from) / "model" if st.init_from else None,
                           chat_template=self.template, mix=mix, eval_rows=ev.rows if ev else [])
        log.info("%s (%s): %s, key %s, %d rows from %s", p.name, p.kind,
                 "resuming" if p.action == "resume" else "starting", p.key, len(mix.rows), st.mix)
        t0 = time.time()
        summary = StageSummary.from_dict(stage_kind(p.kind).run(ctx))
        summary.seconds = round(time.time() - t0, 1)
        # Under `accelerate launch` every process runs the stage; only the main one finishes it.
        from accelerate import PartialState
        state = PartialState()
        if not is_main_process():
            state.wait_for_everyone()
            return summary
        self.run_dir.write_recipe(self._recipe_yaml(p.name), self.recipe.source, work / "config.yaml")
        write_json(work / "manifest.json", {"train": mix.manifest, "eval": ev.manifest if ev else None})
        shutil.rmtree(work / TRAINER, ignore_errors=True)  # optimizer states: only needed to resume
        from posttrain.model.load import usual_file_modes
        usual_file_modes(work)
        self.run_dir.write_done(work, StageDone(p.key, p.name, p.kind, time.time(), summary, KEY_VERSION))
        self.run_dir.swap_in(p.name, work)
        state.wait_for_everyone()
        return summary

    def _memory_preflight(self, name: str, st) -> None:
        """The stage's memory estimate against this GPU, warned about before the model loads (memory.preflight)."""
        import torch
        if not (torch.cuda.is_available() and is_main_process()):
            return
        from posttrain.launch import world_size, zero_stage
        from posttrain.memory import GB, preflight
        free, total = torch.cuda.mem_get_info()
        # what other processes hold (async RL's server on this GPU): in use and not this process's cache
        others = max(0.0, (total - free - torch.cuda.memory_reserved()) / GB)
        try:
            warning = preflight(name, st, self.recipe.cfg.model.name, world_size(), zero_stage(), total / GB,
                                others_gb=others)
        except Exception as e:  # advisory: a model whose config cannot be sized here still trains
            log.info("%s: no memory estimate (%s)", name, e)
            return
        if warning:
            log.warning(warning)

    def _recipe_yaml(self, stage: str | None = None) -> str:
        r = self.recipe
        d = OmegaConf.to_container(OmegaConf.structured(r.cfg))
        d["stages"] = {n: r.stage_dict(n) for n in r.stages if stage in (None, n)}
        return OmegaConf.to_yaml(d)

