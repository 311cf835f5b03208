"""Padding-free packing: bin documents into rows and describe their boundaries.

A packed row is only correct for the hybrid if every layer is told where documents start:
`cu_seq_lens_q/k` (cumulative lengths over the flattened batch, what fla and flash varlen take),
`seq_idx` (document index per token), and `position_ids` restarting per document. The model
side (`posttrain.model.packing.enable_exact_packing`) reads these keys.

Labels follow HF's convention (unshifted; the model shifts): a label at position t is the
target predicted from position t-1. The first token of every document is masked, so the last
token of one document never learns to predict the next document.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

import torch

IGNORE_INDEX = -100
# Keys a model forward must not receive; trainers read them for accounting. `cu_seq_lens_host` is
# cu_seq_lens_q as a tuple of ints: a trainer moving the batch to the GPU leaves it on the host, so
# the model reads the boundaries without a device-to-host copy (a sync) at every forward.
NON_MODEL_KEYS = ("num_real_tokens", "spans", "num_pad_tokens", "cu_seq_lens_host")


def best_fit_decreasing(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Bin item indices into rows of at most max_len tokens, longest items first.

    Each item goes to the fullest row it still fits in. Deterministic: ties keep input order.

    >>> best_fit_decreasing([5, 3, 4, 2], 8)
    [[0, 1], [2, 3]]
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    # (space left, row index), sorted, so bisect finds the tightest row that still fits.
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        if n > max_len:
            raise ValueError(f"item {i} has length {n} > max_len {max_len}; truncate first")
        j = bisect.bisect_left(free, (n, -1))
        if j == len(free):
            rows.append([i])
            bisect.insort(free, (max_len - n, len(rows) - 1))
        else:
            space, r = free.pop(j)
            rows[r].append(i)
            bisect.insort(free, (space - n, r))
    return rows


class PackedRowBatches(torch.utils.data.Sampler):
    """Batch sampler whose batches are rows: item indices whose token lengths fill `max_len`.

    For stages whose packed rows hold however many items fit (DPO: both sequences of each pair),
    rather than a fixed count padded to the longest: at 16K a fixed count either overflows the row
    or leaves most of it empty. Each epoch shuffles the items, bins them best-fit decreasing within
    windows of `window` items (so rows differ between epochs), then shuffles the rows. An item longer
    than a row gets a row of its own. Every process builds the same rows from the same seed;
    accelerate's prepare() then deals them out to the processes.

    >>> b = PackedRowBatches([6, 2, 5, 3, 4, 4], max_len=8, seed=0)
    >>> sorted(sorted(r) for r in b), len(b), b.items_per_row
    ([[0, 1], [2, 3], [4, 5]], 3, 2.0)
    """

    def __init__(self, lengths: Sequence[int], max_len: int, seed: int = 0, window: int = 1024):
        self.lengths, self.max_len, self.seed, self.window = [min(n, max_len) for n in lengths], max_len, seed, window
        # accelerate's DataLoaderShard.set_epoch reaches a batch sampler wrapped for several processes
        # (BatchSamplerShard) only through its `.sampler`: without this, rows never reshuffle there.
        self.sampler = self
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = random.Random(self.seed * 100_003 + epoch)
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        rows = []
        for w in range(0, len(idx), self.window):
            chunk = idx[w:w + self.window]
            rows += [[chunk[j] for j in r] for r in best_fit_decreasing([self.lengths[i] for i in chunk], self.max_len)]
        rng.shuffle(rows)
        self.rows = rows

    @property
    def items_per_row(self) -> float:
        return len(self.lengths) / max(1, len(self.rows))

    def __iter__(self):
        return iter([list(r) for r in self.rows])

    def __len__(self) -> int:
        return len(self.rows)


def list_lengths(ds, key: str) -> list[int]:
    """Length of every list in a datasets column, from Arrow: reading a token-id column into Python
    lists would hold every token of a 7B-scale mix in memory at once."""
    import pyarrow.compute as pc
    out: list[int] = []
    for b in ds.with_format("arrow").iter(batch_size=8192):
        out += pc.list_value_length(b[key]).to_pylist()
    return out


def pad_packed_row(batch: dict, multiple: int, pad_token_id: int) -> dict:
    """Pad a padding-free batch (TRL's: one row, cu_seq_lens, seq_idx) to a multiple of `multiple` tokens
    with one padding segment of its own, as pack_sequences(pad_to=...) does; adds `num_pad_tokens`.

    Why: on the GPU a new row length recompiles fla's tilelang backward and flex attention (~25 s), so
    rows that change length every step stall training; best-fit rows are nearly full, so padding
    them to max_length costs little.

    >>> b = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[-100, 6, 7]]),
    ...      "position_ids": torch.tensor([[0, 1, 0]]), "seq_idx": torch.tensor([[0, 0, 1]], dtype=torch.int32),
    ...      "cu_seq_lens_q": torch.tensor([0, 2, 3], dtype=torch.int32), "max_length_q": 2}
    >>> b["cu_seq_lens_k"], b["max_length_k"] = b["cu_seq_lens_q"], 2
    >>> out = pad_packed_row(b, 4, pad_token_id=0)
    >>> out["input_ids"].tolist(), out["position_ids"].tolist(), out["seq_idx"].tolist()
    ([[5, 6, 7, 0]], [[0, 1, 0, 0]], [[0, 0, 1, 2]])
    >>> out["cu_seq_lens_q"].tolist(), out["labels"][0, -1].item(), out["num_pad_tokens"]
    ([0, 2, 3, 4], -100, 1)
    """
    n = batch["input_ids"].shape[1]
    p = -(-n // multiple) * multiple - n
    batch["num_pad_tokens"] = p
    if p:
        def cat(key, tail):
            batch[key] = torch.cat([batch[key], tail.to(batch[key].dtype)[None]], dim=1)
        cat("input_ids", torch.full((p,), pad_token_id))
        cat("labels", torch.full((p,), IGNORE_INDEX))
        cat("position_ids", torch.arange(p))
        cat("seq_idx", torch.full((p,), int(batch["seq_idx"][0, -1]) + 1))
        cu = torch.cat([batch["cu_seq_lens_q"], torch.tensor([n + p], dtype=batch["cu_seq_lens_q"].dtype)])
        batch["cu_seq_lens_q"], batch["cu_seq_lens_k"] = cu, cu.clone()
        batch["max_length_q"] = batch["max_length_k"] = max(int(batch["max_length_q"]), p)
    batch["cu_seq_lens_host"] = tuple(batch["cu_seq_lens_q"].tolist())
    return batch


def _loss_mask(example: dict) -> list[int] | None:
    for key in ("assistant_masks", "completion_mask"):
        if example.get(key) is not None:
            return list(example[key])
    return None


def pack_sequences(
    sequences: Sequence[Sequence[int]],
    loss_masks: Sequence[Sequence[int] | None] | None = None,
    labels: Sequence[Sequence[int] | None] | None = None,
    pad_token_id: int = 0,
    pad_to: int | None = None,
) -> dict:
    """Concatenate documents into one row (batch dim 1) with their boundaries.

    loss_masks: per document 0/1, loss only where 1 (None: every token). labels: per document
    explicit targets (None: the input ids). pad_to: pad the row to this length with a padding
    segment of its own (never a target, never seen by a real document).

    Returns input_ids, labels, position_ids, seq_idx ([1, N]), cu_seq_lens_q/k (int32, one
    entry per segment + 1) and cu_seq_lens_host (the same as ints), max_length_q/k, num_real_tokens,
    and spans: [(start, end)] of each input document in the row, so per-document sums (DPO logprobs)
    can be gathered back.
    """
    ids: list[int] = []
    tgt: list[int] = []
    pos: list[int] = []
    seg: list[int] = []
    cu = [0]
    spans = []
    for d, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            raise ValueError(f"document {d} is empty")
        mask = loss_masks[d] if loss_masks is not None else None
        lab = labels[d] if labels is not None and labels[d] is not None else seq
        if (mask is not None and len(mask) != n) or len(lab) != n:
            raise ValueError(f"document {d}: mask/labels length differs from input_ids ({n})")
        doc_t = [t if (mask is None or mask[i]) else IGNORE_INDEX for i, t in enumerate(lab)]
        doc_t[0] = IGNORE_INDEX
        start = len(ids)
        ids.extend(seq)
        tgt.extend(doc_t)
        pos.extend(range(n))
        seg.extend([d] * n)
        spans.append((start, start + n))
        cu.append(start + n)
    real = len(ids)
    if pad_to is not None and pad_to > real:
        p = pad_to - real
        ids.extend([pad_token_id] * p)
        tgt.extend([IGNORE_INDEX] * p)
        pos.extend(range(p))
        seg.extend([len(sequences)] * p)
        cu.append(pad_to)
    lens = [b - a for a, b in zip(cu[:-1], cu[1:])]
    cu_t = torch.tensor(cu, dtype=torch.int32)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([tgt], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        "seq_idx": torch.tensor([seg], dtype=torch.int32),
        "cu_seq_lens_q": cu_t,
        "cu_seq_lens_k": cu_t.clone(),
        "cu_seq_lens_host": tuple(cu),
        "max_length_q": max(lens),
        "max_length_k": max(lens),
        "num_real_tokens": real,
        "spans": spans,
    }


class PackedCollator:
    """HF/TRL `data_collator` that packs a list of tokenized examples padding-free.

    Examples are dicts with `input_ids` and optional `assistant_masks` / `completion_mask`
    (loss only where 1) and `labels`. Documents longer than max_length are truncated to it.
    Documents are binned best-fit-decreasing into rows of at most max_length tokens; with one
    row there is no padding at all, with several each is padded to the longest row (rounded up
    to pad_to_multiple_of, which also bounds the shapes a compiled kernel sees). The rows are
    flattened for the kernels: `cu_seq_lens_*` and `seq_idx` index the flattened tokens, and
    each row's padding is a segment of its own.

    `num_real_tokens` counts non-pad tokens, for throughput; with return_spans, `spans` gives
    each example's (start, end) in the flattened tokens, in input order (examples emptied by
    truncation to 0 tokens are dropped). `posttrain.model.packing` drops both keys before the
    model sees the batch.
    """

    def __init__(self, max_length: int, pad_token_id: int = 0, pad_to_multiple_of: int | None = None,
                 return_spans: bool = False):
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_spans = return_spans

    def __call__(self, examples: list[dict]) -> dict:
        docs, masks, labels = [], [], []
        for ex in examples:
            n = min(len(ex["input_ids"]), self.max_length)
            if n == 0:
                continue
            mask = _loss_mask(ex)
            lab = ex.get("labels")
            docs.append(list(ex["input_ids"][:n]))
            masks.append(mask[:n] if mask is not None else None)
            labels.append(list(lab[:n]) if lab is not None else None)
        if not docs:
            raise ValueError("PackedCollator got no non-empty examples")
        rows = best_fit_decreasing([len(d) for d in docs], self.max_length)
        width = max(sum(len(docs[i]) for i in r) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = -(-width // m) * m
        # A single row needs no padding unless a multiple was asked for.
        pad_to = width if (len(rows) > 1 or self.pad_to_multiple_of) else None
        packed = [
            pack_sequences([docs[i] for i in r], [masks[i] for i in r], [labels[i] for i in r],
                           self.pad_token_id, pad_to)
            for r in rows
        ]
        out = _stack_rows(packed, width)
        # Rows hold documents in bin order; report spans in the order examples came in.
        order = [i for r in rows for i in r]
        spans = [None] * len(order)
        for i, span in zip(order, out.pop("spans")):
            spans[i] = span
        if self.return_spans:
            out["spans"] = spans
        return out


def _stack_rows(packed: list[dict], width: int) -> dict:
    """Stack single-row packs into [R, width] and rebase boundaries onto the flattened tokens."""
    out = {k: torch.cat([p[k] for p in packed]) for k in ("input_ids", "labels", "position_ids")}
    cu, seg, spans = [torch.zeros(1, dtype=torch.int32)], [], []
    n_seg = 0
    for r, p in enumerate(packed):
        cu.append(p["cu_seq_lens_q"][1:] + r * width)
        seg.append(p["seq_idx"] + n_seg)
        n_seg += len(p["cu_seq_lens_q"]) - 1
        spans.extend((a + r * width, b + r * width) for a, b in p["spans"])
    cu_t = torch.cat(cu)
    out.update(
        seq_idx=torch.cat(seg),
        cu_seq_lens_q=cu_t,
        cu_seq_lens_k=cu_t.clone(),
        cu_seq_lens_host=tuple(cu_t.tolist()),
        max_length_q=max(p["max_length_q"] for p in packed),
        max_length_k=max(p["max_length_k"] for p in packed),
        num_real_tokens=sum(p["num_real_tokens"] for p in packed),
        spans=spans,
    )
    return out


def packed_sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, spans: Sequence[tuple[int, int]], chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of target logprobs and target count per packed document, from full logits.

    logits [R, T, V] and labels [R, T] as from `pack_sequences` / `PackedCollator` (unshifted
    labels, -100 where no loss); spans index the flattened tokens. Runs in fp32 a chunk of
    tokens at a time. The stage itself uses `document_logps` on TRL's fused LM head, which never
    builds the [R, T, V] logits; this is its reference (tests, benchmarks).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    # Position t predicts label t+1; the row-final position predicts nothing (its successor is
    # another row or another document, whose first label is -100 anyway).
    tgt = torch.full_like(labels, IGNORE_INDEX)
    tgt[:, :-1] = labels[:, 1:]
    tgt = tgt.reshape(-1)
    token_logp = torch.zeros(tgt.shape[0], dtype=torch.float32, device=logits.device)
    for s in range(0, tgt.shape[0], chunk):
        lg = flat_logits[s : s + chunk].float()
        t = tgt[s : s + chunk]
        valid = t != IGNORE_INDEX
        picked = lg.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1) - lg.logsumexp(-1)
        token_logp[s : s + chunk] = torch.where(valid, picked, 0.0)
    return document_logps(token_logp.view(labels.shape)[:, :-1], labels, spans)


def document_logps(
    token_logps: torch.Tensor, labels: torch.Tensor, spans: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-document sums of next-token logprobs and target counts on packed rows.

    token_logps [R, T-1]: position t scores label t+1; ignored where that label is -100 (TRL's fused
    LM head returns 0 there: `model(..., labels=labels, fused_lm_head=True).log_probs`, trl.trainer.utils.
    add_fused_lm_head); labels [R, T] unshifted; spans index the flattened R x T tokens.

    >>> labels = torch.tensor([[-100, 5, 6, -100, 7]])   # documents [0, 3) and [3, 5)
    >>> lp = torch.tensor([[-1.0, -2.0, 0.0, -4.0]])     # scores labels 1..4; label 3 is -100
    >>> document_logps(lp, labels, [(0, 3), (3, 5)])
    (tensor([-3., -4.]), tensor([2., 1.]))
    """
    R, T = labels.shape
    token_logp = torch.zeros(R, T, dtype=torch.float32, device=token_logps.device)
    token_logp[:, :-1] = token_logps.float()
    tgt = torch.full_like(labels, IGNORE_INDEX)
    tgt[:, :-1] = labels[:, 1:]
    valid = tgt.reshape(-1) != IGNORE_INDEX
    token_logp = torch.where(valid, token_logp.reshape(-1), 0.0)  # whatever the source put at ignored labels
    valid = valid.float()
    doc = torch.full((R * T,), len(spans), dtype=torch.long, device=token_logp.device)
    for d, (a, b) in enumerate(spans):
        # The prediction of a document's tokens sits one position earlier than the tokens.
        doc[a : b - 1] = d
    sums = torch.zeros(len(spans) + 1, dtype=torch.float32, device=token_logp.device)
    counts = torch.zeros_like(sums)
    sums = sums.index_add(0, doc, token_logp)
    counts.index_add_(0, doc, valid)
    return sums[:-1], counts[:-1]
