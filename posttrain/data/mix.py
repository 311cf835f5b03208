"""Data mixes: one YAML file -> a deterministic list of canonical rows plus a manifest.

A mix lists sources (hub id, local jsonl/json/parquet/arrow file, `save_to_disk` dir, or
`builtin:NAME`), each with a split, a `count` or `fraction` (over 1 upsamples), a column
mapping and simple filters. The result depends only on the files and the seed, and the
manifest records sources, counts and content hashes so a stage can tell whether its data
changed. A malformed row is an error naming the file and row, unless `skip_invalid: true`,
which drops and counts it.

Canonical row formats and how a row becomes one: posttrain/data/formats.py.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from posttrain.data.builtin import load_builtin
from posttrain.data.formats import (FORMATS, BadRow, canonicalize, format_from_columns, present_columns,
                                    prompt_text)



class MixError(ValueError):
    """A data-mix problem, one line naming the file, source and row."""


class SourceUnavailable(MixError):
    """A hub source that could not be fetched here (offline): a dry run plans without it."""


@dataclass
class SourceConfig:
    path: str = MISSING
    """Hub dataset id, local file/dir, or builtin:NAME."""
    split: str = "train"
    subset: str | None = None
    """Hub dataset config name."""
    count: int | None = None
    """Rows to take (more than available upsamples); exclusive with fraction."""
    fraction: float | None = None
    """Fraction of rows to take (> 1 upsamples)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Rename raw column -> canonical column (e.g. {question: prompt, answer: ground_truth})."""
    max_chars: int | None = None
    """Drop rows whose text is longer than this (a cheap pre-tokenization length filter)."""


@dataclass
class MixConfig:
    name: str | None = None
    format: str | None = None
    """messages | preference | prompt; when unset, decided from each source's columns
    (`format_from_columns`) and checked on every row."""
    seed: int = 0
    """Sampling and shuffling seed: the same seed gives the same rows in the same order."""
    dedup: bool = True
    """Drop exact duplicate rows (after canonicalisation)."""
    skip_invalid: bool = False
    """Drop malformed rows (counted in the manifest) instead of failing."""
    decontaminate: list[str] = field(default_factory=list)
    """Other mix files (eval sets): rows whose prompt text appears there are dropped."""
    sources: list[SourceConfig] = field(default_factory=list)


@dataclass
class ResolvedMix:
    rows: list[dict]
    manifest: dict[str, Any]

    @property
    def format(self) -> str:
        return self.manifest["format"]


def row_hash(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def rows_hash(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(row_hash(r).encode())
    return h.hexdigest()


def load_mix_config(path: str | Path) -> MixConfig:
    path = Path(path)
    if not path.is_file():
        raise MixError(f"{path}: data mix file not found")
    try:
        raw = OmegaConf.load(path)
        cfg: MixConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MixConfig), raw))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise MixError(f"{path}: {key + ': ' if key else ''}{str(e).splitlines()[0]}") from None
    except Exception as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        if mark is not None and problem:  # a YAML error: its line and key (duplicate keys)
            raise MixError(f"{path}: line {mark.line + 1}: not valid YAML: {problem}") from None
        raise MixError(f"{path}: not a valid data mix: {str(e).splitlines()[0]}") from None
    if not cfg.sources:
        raise MixError(f"{path}: sources: a mix needs at least one source")
    if cfg.format is not None and cfg.format not in FORMATS:
        raise MixError(f"{path}: format: must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    for i, s in enumerate(cfg.sources):
        if s.count is not None and s.fraction is not None:
            raise MixError(f"{path}: sources.{i}: give count or fraction, not both")
        if (s.count is not None and s.count < 0) or (s.fraction is not None and not 0 <= s.fraction < float("inf")):
            raise MixError(f"{path}: sources.{i}: count/fraction must be >= 0")
        if s.max_chars is not None and s.max_chars < 1:
            raise MixError(f"{path}: sources.{i}.max_chars: must be >= 1, got {s.max_chars}")
    if not 0 <= cfg.seed < 2**32:
        raise MixError(f"{path}: seed: must be >= 0 and < 2**32, got {cfg.seed}")
    return cfg


def _read_local(p: Path, split: str) -> list[dict]:
    if p.is_dir():
        from datasets import DatasetDict, load_from_disk
        ds = load_from_disk(str(p))
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise MixError(f"{p}: split {split!r} not in saved dataset (has {', '.join(ds)})")
            ds = ds[split]
        return ds.to_list()
    if p.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                rows.append(BadRow(f"line {n}: not valid JSON ({e.msg})"))
        return rows
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        return data if isinstance(data, list) else data[split]
    if p.suffix == ".parquet":
        from datasets import Dataset
        return Dataset.from_parquet(str(p)).to_list()
    if p.suffix == ".arrow":
        from datasets import Dataset
        return Dataset.from_file(str(p)).to_list()
    raise MixError(f"{p}: unsupported file type {p.suffix!r} (jsonl, json, parquet, arrow, or a save_to_disk dir)")


def _read_source(s: SourceConfig, base: Path) -> list[dict]:
    if s.path.startswith("builtin:"):
        try:
            return load_builtin(s.path.split(":", 1)[1], s.split)
        except ValueError as e:
            raise MixError(str(e)) from None
    local = Path(s.path) if Path(s.path).is_absolute() else None
    for cand in ([local] if local else [Path.cwd() / s.path, base / s.path]):
        if cand.exists():
            return _read_local(cand, s.split)
    if s.path.startswith((".", "/")) or Path(s.path).suffix in (".jsonl", ".json", ".parquet", ".arrow"):
        raise MixError(f"file not found: {s.path}")
    from datasets import load_dataset  # a hub id: only touched when named
    return load_dataset(s.path, s.subset, split=s.split).to_list()


def _is_hub_id(path: str) -> bool:
    return not path.startswith(("builtin:", ".", "/")) and not Path(path).exists()


def _text(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def _source_format(raw: list, declared: str | None, where: str) -> str:
    """The mix's `format` when it gives one, else the format the source's columns (every row's,
    not the first row's) say; `canonicalize` then checks each row against it."""
    if declared is not None:
        return declared
    cols = set().union(*(present_columns(r) for r in raw if isinstance(r, dict)))
    if not cols:
        raise MixError(f"{where}: no rows to tell the format from (set format: in the mix)")
    try:
        return format_from_columns(cols)
    except ValueError as e:
        raise MixError(f"{where}: {e}") from None


def _take(rows: list, n: int, rng: random.Random) -> list:
    """n rows: whole shuffled passes then a sample, so upsampling repeats every row evenly."""
    if not rows or n == 0:
        return []
    out = []
    while len(out) + len(rows) <= n:
        out += rng.sample(rows, len(rows))
    return out + rng.sample(rows, n - len(out))


def resolve_mix(path: str | Path, check: Callable[[dict], str | None] | None = None) -> ResolvedMix:
    """`check(row)`: what a consumer finds wrong with a canonical row (posttrain/data/validate.py),
    or None; such rows fail or are dropped like malformed ones."""
    path = Path(path)
    cfg = load_mix_config(path)
    fmt, rng = cfg.format, random.Random(cfg.seed)
    banned = set()
    for d in cfg.decontaminate:
        dp = Path(d) if Path(d).exists() else path.parent / d
        banned |= {prompt_text(r) for r in resolve_mix(dp).rows}
    out, sources = [], []
    for i, s in enumerate(cfg.sources):
        where = f"{path}: sources.{i} ({s.path}, split {s.split})"
        try:
            raw = _read_source(s, path.parent)
        except MixError as e:
            raise MixError(f"{where}: {e}") from None
        except Exception as e:
            err = SourceUnavailable if _is_hub_id(s.path) and not (path.parent / s.path).exists() else MixError
            raise err(f"{where}: could not load: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if s.columns:
            raw = [{s.columns.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in raw]
        src_fmt = _source_format(raw, cfg.format, where)
        if fmt is not None and src_fmt != fmt:
            raise MixError(f"{where}: its columns make it a {src_fmt!r} source, but earlier sources are {fmt!r}")
        fmt = src_fmt
        good, invalid, filtered, reasons = [], 0, 0, {}
        for j, r in enumerate(raw):
            try:
                c = canonicalize(r, fmt)
                why = check(c) if check else None
                if why:
                    raise ValueError(why)
            except (ValueError, KeyError, TypeError) as e:
                if not cfg.skip_invalid:
                    raise MixError(f"{where}: row {j}: {e} (set skip_invalid: true to drop such rows)") from None
                invalid += 1
                reasons[str(e)[:120]] = reasons.get(str(e)[:120], 0) + 1
                continue
            if (s.max_chars and len(_text(c)) > s.max_chars) or (banned and prompt_text(c) in banned):
                filtered += 1
                continue
            good.append(c)
        n = s.count if s.count is not None else round((1.0 if s.fraction is None else s.fraction) * len(good))
        taken = _take(good, n, rng)
        sources.append({"path": s.path, "split": s.split, "available": len(raw), "valid": len(good),
                        "requested": s.count, "invalid_dropped": invalid, "invalid_reasons": reasons,
                        "filtered": filtered, "taken": len(taken),
                        "sha256": rows_hash(taken)})
        out += taken
    before = len(out)
    if cfg.dedup:
        seen, uniq = set(), []
        for r in out:
            h = row_hash(r)
            if h not in seen:
                seen.add(h); uniq.append(r)
        # Upsampled copies are intended repeats, not duplicates: only dedup when nothing was upsampled.
        out = uniq if all(x["taken"] <= x["valid"] for x in sources) else out
    rng.shuffle(out)
    manifest = {"mix": str(path), "name": cfg.name or path.stem, "format": fmt, "seed": cfg.seed,
                "mix_file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "sources": sources, "rows": len(out), "dedup_removed": before - len(out),
                "invalid_dropped": sum(x["invalid_dropped"] for x in sources), "sha256": rows_hash(out)}
    return ResolvedMix(rows=out, manifest=manifest)


def count_tokens(rows: list[dict], tokenizer) -> int:
    """Tokens as a stage would see them: chat-rendered text of every message list in a row."""
    total = 0
    for r in rows:
        for key in ("messages", "prompt", "chosen", "rejected"):
            if key in r:
                total += len(tokenizer.apply_chat_template(r[key], tokenize=True, return_dict=False))
    return total
