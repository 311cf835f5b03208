"""Data mixes: one YAML file -> a deterministic list of canonical rows plus a manifest.

A mix lists sources (hub id, local jsonl/json/parquet/arrow file, `save_to_disk` dir, or
`builtin:NAME`), each with a split, a `count` or `fraction` (over 1 upsamples), a column
mapping and simple filters. The result depends only on the files and the seed, and the
manifest records sources, counts and content hashes so a stage can tell whether its data
changed. A malformed row is an error naming the file and row, unless `skip_invalid: true`,
which drops and counts it.

Canonical row formats (what stages consume):
  messages    {"messages": [{"role", "content", ...}, ...], ...extra columns}
  preference  {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs], ...extra columns}
  prompt      {"prompt": [msgs], "ground_truth": str | list, ...extra columns (e.g. verifier)}
A source's format comes from its columns (`format_from_columns`) and every row is checked
against it. What each format accepts, from the Dolci dataset cards and open-instruct's transforms:
messages rows keep every message field (`functions`, `function_calls`, role `environment`: AI2's
tool rows) and prompt/completion rows become `messages`; preference rows are TRL's
prompt/chosen/rejected or whole chosen/rejected conversations (Dolci DPO), split into the shared
prompt and the final answers so the prompt is rendered once; prompt rows take `messages` (the
answer dropped), a message list or a flat `prompt` string, with `ground_truth` / `dataset` kept
as they come (open-instruct zips list-valued ones).
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

FORMATS = ("messages", "preference", "prompt")
ROLES = ("system", "user", "assistant", "tool", "environment")
"""`environment`: tool output in AI2's format (the olmo3 templates); `tool`: the same in HF's."""
_FORMAT_COLUMNS = {"messages", "prompt", "completion", "chosen", "rejected", "source_prompt"}


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
                rows.append(_Bad(f"line {n}: not valid JSON ({e.msg})"))
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


class _Bad:
    """A row that could not even be parsed; carries its reason to the validator."""
    def __init__(self, why: str):
        self.why = why


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


def _message(m: dict) -> dict:
    """A message with its role, content and any other fields it carries (AI2 tool rows: `functions`
    on a system/user turn, `function_calls` on an assistant turn); None-valued fields are dropped
    (a parquet struct column gives every message every field)."""
    return {"role": m.get("role"), "content": m.get("content"),
            **{k: v for k, v in m.items() if k not in ("role", "content") and v is not None}}


def _is_hub_id(path: str) -> bool:
    return not path.startswith(("builtin:", ".", "/")) and not Path(path).exists()


def _as_messages(x: Any, role: str) -> list[dict]:
    if isinstance(x, str):
        return [{"role": role, "content": x}]
    if isinstance(x, list) and all(isinstance(m, dict) for m in x):
        return [_message(m) for m in x]
    raise ValueError(f"expected a string or a list of messages, got {type(x).__name__}")


def _check_messages(msgs: list[dict], what: str) -> None:
    if not msgs:
        raise ValueError(f"{what} is empty")
    for i, m in enumerate(msgs):
        if m["role"] not in ROLES:
            raise ValueError(f"{what}[{i}]: unknown role {m['role']!r} (known: {', '.join(ROLES)})")
        # An assistant turn that only calls functions may have no text (the olmo3 templates allow it).
        if not isinstance(m["content"], str) and not (m["role"] == "assistant" and m["content"] is None
                                                      and m.get("function_calls") is not None):
            raise ValueError(f"{what}[{i}]: message content must be a string")


def _trains_something(m: dict) -> bool:
    return m["role"] == "assistant" and bool((m["content"] or "").strip() or m.get("function_calls"))


def _present(row: dict) -> set[str]:
    return {k for k, v in row.items() if v is not None}


def format_from_columns(columns: set[str] | list[str]) -> str:
    """A source's format from its column names (after the mix's renames):

    - `chosen` + `rejected`: preference (TRL's prompt/chosen/rejected, or whole conversations as in
      Dolci-Instruct-DPO / Dolci-Think-DPO-7B, with or without a `prompt` column);
    - `completion`, or `messages` without a verifier: messages (SFT; a `ground_truth` column alone,
      as in held-out rows, does not make it RL);
    - `messages` + `ground_truth` + a verifier (`dataset`, open-instruct's name, or `verifier`):
      prompt (Dolci-Think-RL-7B);
    - `prompt` or `source_prompt`: prompt (Dolci-Instruct-RL, TRL prompt datasets).

    >>> format_from_columns({"messages", "ground_truth", "dataset"}), format_from_columns({"messages", "id"})
    ('prompt', 'messages')
    """
    c = set(columns)
    if {"chosen", "rejected"} <= c:
        return "preference"
    if "completion" in c:
        return "messages"
    if "messages" in c:
        return "prompt" if "ground_truth" in c and c & {"dataset", "verifier"} else "messages"
    if c & {"prompt", "source_prompt"}:
        return "prompt"
    raise ValueError(f"cannot tell the format from columns {sorted(c)} (want messages, prompt/completion, "
                     "chosen/rejected (+ prompt), messages or prompt + ground_truth)")


def infer_format(row: dict) -> str:
    return format_from_columns(_present(row))


def _split_conversations(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Whole chosen/rejected conversations -> (prompt, chosen turn, rejected turn). As open-instruct's
    preference_tulu transform assumes, only the last message differs and it holds the answer."""
    for k, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError(f"{k}: the conversation must end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected conversations differ before their last message")
    return chosen[:-1], chosen[-1:], rejected[-1:]


def _rl_prompt(row: dict) -> list[dict]:
    """The RL prompt: `messages` without its trailing assistant answer (open-instruct rlvr_tokenize
    drops the last message of a multi-turn row), a `prompt` message list, or a flat `prompt` string.
    Dolci-Instruct-RL's `prompt` is open-instruct's raw prompt, "role: content" lines; its
    `source_prompt` is used when it renders to exactly that string, else a leading "user: " is cut."""
    if row.get("messages") is not None:
        msgs = _as_messages(row["messages"], "user")
        while len(msgs) > 1 and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return msgs
    p, src = row.get("prompt"), row.get("source_prompt")
    if isinstance(p, str):
        if isinstance(src, list) and all(isinstance(m, dict) for m in src) and \
                p == "\n".join(f"{m.get('role')}: {m.get('content')}" for m in src):
            return _as_messages(src, "user")
        return [{"role": "user", "content": p[len("user: "):] if p.startswith("user: ") else p}]
    if p is not None:
        return _as_messages(p, "user")
    if src is not None:
        return _as_messages(src, "user")
    raise ValueError("missing column 'messages' or 'prompt'")


def canonicalize(row: Any, fmt: str) -> dict:
    """Validate one row and return it in canonical form; ValueError says what is wrong."""
    if isinstance(row, _Bad):
        raise ValueError(row.why)
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a mapping, got {type(row).__name__}")
    own = infer_format(row) if _present(row) & _FORMAT_COLUMNS else None
    if own is not None and own != fmt and not (fmt == "prompt" and own == "messages"):
        raise ValueError(f"its columns ({', '.join(sorted(_present(row) & _FORMAT_COLUMNS))}) make it a "
                         f"{own!r} row, but the source's format is {fmt!r}")
    extra = {k: v for k, v in row.items() if k not in ("messages", "prompt", "completion", "chosen", "rejected")}
    if fmt == "messages":
        if row.get("messages") is not None:
            msgs = _as_messages(row["messages"], "user")
        elif row.get("prompt") is not None and row.get("completion") is not None:
            msgs = _as_messages(row["prompt"], "user") + _as_messages(row["completion"], "assistant")
        else:
            raise ValueError("missing column 'messages' (or 'prompt' + 'completion')")
        _check_messages(msgs, "messages")
        if not any(_trains_something(m) for m in msgs):
            raise ValueError("no non-empty assistant message to train on")
        return {"messages": msgs, **extra}
    if fmt == "preference":
        for k in ("chosen", "rejected"):
            if row.get(k) is None:
                raise ValueError(f"missing column {k!r}")
        chosen, rejected = _as_messages(row["chosen"], "assistant"), _as_messages(row["rejected"], "assistant")
        if any(m["role"] != "assistant" for m in chosen + rejected):
            # Whole conversations (Dolci DPO sets): the prompt is inside them. A `prompt` column
            # beside them (Dolci-Think-DPO-7B) repeats it, and is ignored as open-instruct does.
            prompt, chosen, rejected = _split_conversations(chosen, rejected)
            if not prompt:
                raise ValueError("chosen/rejected hold no prompt before the answer")
        elif row.get("prompt") is not None:
            prompt = _as_messages(row["prompt"], "user")
        else:
            raise ValueError("missing column 'prompt' (chosen/rejected hold only the answers)")
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        for k, v in out.items():
            _check_messages(v, k)
        return {**out, **extra}
    if fmt == "prompt":
        prompt = _rl_prompt(row)
        _check_messages(prompt, "prompt")
        if row.get("ground_truth") is not None:
            gt = row["ground_truth"]
            extra["ground_truth"] = gt if isinstance(gt, (str, list, dict)) else str(gt)
        return {"prompt": prompt, **extra}
    raise ValueError(f"unknown format {fmt!r}")


def _text(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def prompt_text(row: dict) -> str:
    """The user-visible prompt of a canonical row, for decontamination."""
    msgs = row.get("prompt") or [m for m in row.get("messages", []) if m["role"] != "assistant"]
    return "\n".join(m["content"].strip() for m in msgs)


def _source_format(raw: list, declared: str | None, where: str) -> str:
    """The mix's `format` when it gives one, else the format the source's columns (every row's,
    not the first row's) say; `canonicalize` then checks each row against it."""
    if declared is not None:
        return declared
    cols = set().union(*(_present(r) for r in raw if isinstance(r, dict)))
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
