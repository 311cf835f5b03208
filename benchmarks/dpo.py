"""DPO step throughput: packed vs padded pairs, cached vs live reference logprobs.

The DPO stage's own pieces on a ~1.4B OlmoHybrid with the 7B's width ratios (benchmarks/packing.py
SIZES), bf16 weights, fused AdamW: `PackedPairCollator` (chosen then rejected of every pair in one
row, exact document boundaries), sequence log-probs through TRL's chunked LM head + `document_logps`
(no [T, vocab] logits; the stage's `_packed_logps`, and TRL's DPOTrainer on padded rows) and
`dpo_loss` (dpo_norm, beta 5). An optimizer step is `--rows` micro-batches of pairs, each
micro-batch holding as many pairs as fit in T tokens (packed) or in 2 x pairs x longest <= T
(padded, the stock model, what TRL's DPOTrainer does). Modes:
- cache: reference logprobs come from a table computed before training (the stage's disk cache);
- live:  a frozen bf16 reference copy runs a no-grad forward on every micro-batch (TRL's default).
Pair lengths are log-normal (prompt mean 256, each completion mean 768, clipped so a pair fits T).
Real tokens/s counts prompt + chosen + rejected tokens of every pair once per step. MFU credits
the policy's forward + backward per document (posttrain.model.flops) against 798 TFLOP/s; the
live reference's extra forward is work, but not useful work, so it is not credited.

    PYTHONPATH=. python benchmarks/dpo.py [--seq-len 16384] [--rows 8]
    PYTHONPATH=. python benchmarks/dpo.py --size tiny --device cpu --seq-len 512 --rows 2  # smoke
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM
from trl.trainer.utils import add_fused_lm_head

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from packing import PAD, SIZES, markdown_table, to_device  # noqa: E402
from packing import fmt_row as packing_row  # noqa: E402

from posttrain.data.packing import IGNORE_INDEX, document_logps  # noqa: E402
from posttrain.memory import GB  # noqa: E402
from posttrain.model.flops import REFERENCE_PEAK, device_peak_flops, mfu, train_flops  # noqa: E402
from posttrain.model.kernels import kernel_report  # noqa: E402
from posttrain.model.packing import enable_exact_packing  # noqa: E402
from posttrain.stages.dpo import PackedPairCollator  # noqa: E402
from posttrain.stages.losses import dpo_loss  # noqa: E402

PACKED_KEYS = ("input_ids", "position_ids", "seq_idx", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
               "max_length_k")


def sample_pairs(n: int, T: int, vocab: int, seed: int = 0) -> list[dict]:
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)

    def draw(mean: float, sigma: float = 0.8) -> int:
        return max(8, int(rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)))

    pairs = []
    for _ in range(n):
        p, c, r = draw(256), draw(768), draw(768)
        scale = min(1.0, (T // 2) / (p + max(c, r)))  # each sequence fits half a row, so a pair fits one
        p, c, r = max(4, int(p * scale)), max(4, int(c * scale)), max(4, int(r * scale))
        ids = lambda k: torch.randint(2, vocab, (k,), generator=g).tolist()  # noqa: E731
        pairs.append({"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)})
    return pairs


def pair_tokens(ex: dict) -> int:
    return 2 * len(ex["prompt_ids"]) + len(ex["chosen_ids"]) + len(ex["rejected_ids"])


def micro_batches(pairs: list[dict], T: int, packed: bool) -> list[list[int]]:
    """Consecutive pairs per micro-batch: packed fills T real tokens; padded keeps 2 x n x longest <= T."""
    out, cur, longest, used = [], [], 0, 0
    for i, ex in enumerate(pairs):
        n = pair_tokens(ex)
        seq = len(ex["prompt_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))
        full = (used + n > T) if packed else (2 * (len(cur) + 1) * max(longest, seq) > T)
        if cur and full:
            out.append(cur)
            cur, longest, used = [], 0, 0
        cur.append(i)
        longest, used = max(longest, seq), used + n
    return out + ([cur] if cur else [])


def padded_pairs(examples: list[dict]) -> dict:
    """TRL's layout: chosen rows then rejected rows, right-padded to the longest; labels only on completions."""
    seqs, masks = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for ex in examples:
            seqs.append(ex["prompt_ids"] + ex[key])
            masks.append([0] * len(ex["prompt_ids"]) + [1] * len(ex[key]))
    W = -(-max(map(len, seqs)) // 1024) * 1024  # bucketed: each new width recompiles fla's tilelang kernels
    ids = torch.full((len(seqs), W), PAD, dtype=torch.long)
    att = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r, (s, m) in enumerate(zip(seqs, masks)):
        ids[r, : len(s)] = torch.tensor(s)
        att[r, : len(s)] = 1
        labels[r, : len(s)] = torch.where(torch.tensor(m, dtype=torch.bool), torch.tensor(s), IGNORE_INDEX)
    spans = [(r * W, r * W + len(s)) for r, s in enumerate(seqs)]
    return {"input_ids": ids, "attention_mask": att, "labels": labels, "spans": spans}


def seq_logps(model, batch: dict, packed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    keys = PACKED_KEYS if packed else ("input_ids", "attention_mask")
    out = model(**{k: batch[k] for k in keys}, labels=batch["labels"], use_cache=False, fused_lm_head=True)
    return document_logps(out.log_probs, batch["labels"], batch["spans"])


def run(policy, ref, opt, steps: list[list[dict]], ref_table: list[list[torch.Tensor]] | None, packed: bool,
        warmup: int, config, device) -> dict:
    """Time optimizer steps (each a list of collated micro-batches) after `warmup` untimed passes."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n_pairs = sum(len(b["spans"]) // 2 for s in steps for b in s)

    def step(s: int, micro: list[dict]):
        for m, batch in enumerate(micro):
            if ref is None:
                rc, rr = ref_table[s][m].chunk(2)
            else:
                with torch.no_grad():
                    rc, rr = seq_logps(ref, batch, packed)[0].chunk(2)
            sums, counts = seq_logps(policy, batch, packed)
            (pc, pr), (lc, lr) = sums.chunk(2), counts.chunk(2)
            loss = dpo_loss(pc, pr, rc, rr, 5.0, "dpo_norm", lc, lr)["loss"].sum() / n_pairs
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        for s, micro in enumerate(steps):
            step(s, micro)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t = time.perf_counter()
    for s, micro in enumerate(steps):
        loss = step(s, micro)
    sync()
    total = time.perf_counter() - t
    lens = [b - a for s in steps for b_ in s for a, b in b_["spans"]]
    real = sum(lens)
    processed = sum(b["input_ids"].numel() for s in steps for b in s)
    flops = train_flops(config, lens)
    return {"real_tokens_per_s": real / total, "step_s": total / len(steps), "pairs_per_step": n_pairs / len(steps),
            "micro_batches_per_step": sum(map(len, steps)) / len(steps), "real_fraction": real / processed,
            "mfu": mfu(flops, total, device_peak_flops() or REFERENCE_PEAK), "peak_mem_gb": torch.cuda.max_memory_allocated() / GB
            if device.type == "cuda" else None, "loss": loss.item()}


def build_ref_table(ref, steps, packed: bool) -> tuple[list, float]:
    t = time.perf_counter()
    with torch.no_grad():
        table = [[seq_logps(ref, b, packed)[0] for b in s] for s in steps]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return table, time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="1b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--rows", type=int, default=4, help="micro-batches (rows of <= T tokens) per optimizer step")
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per mode")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["padded-live", "padded-cache", "packed-live", "packed-cache"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dpo.json"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    T = args.seq_len

    config = OlmoHybridConfig(**SIZES[args.size], pad_token_id=PAD, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    with device:
        policy = OlmoHybridForCausalLM(config).to(dtype).train()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    for m in (policy, ref):  # after the copy: each head closes over its own model's forward
        add_fused_lm_head(m)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=device.type == "cuda")
    pairs = sample_pairs(4000, T, config.vocab_size)
    out = {"date": datetime.date.today().isoformat(),
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "model": {"size": args.size, "params": sum(p.numel() for p in policy.parameters()), **SIZES[args.size]},
           "seq_len": T, "rows_per_step": args.rows, "kernels": kernel_report(), "results": []}

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))

    collate = PackedPairCollator(max_length=T, pad_token_id=PAD, pad_to_multiple_of=T)  # one row shape
    # Stock (padded) modes first on the unpatched models; then patch both in place.
    for mode in sorted(args.modes, key=lambda m: m.startswith("packed")):
        packed, live = mode.startswith("packed"), mode.endswith("live")
        if packed and not getattr(policy, "_exact_packing", False):
            print("packed kernels:", enable_exact_packing(policy), enable_exact_packing(ref))
            policy._exact_packing = True
        groups = micro_batches(pairs, T, packed)[: args.rows * args.steps]
        micro = [to_device(collate([pairs[i] for i in g]) if packed else padded_pairs([pairs[i] for i in g]), device)
                 for g in groups]
        steps = [micro[s * args.rows:(s + 1) * args.rows] for s in range(args.steps)]
        r = {"mode": mode}
        try:
            table = None
            if not live:
                table, r["ref_cache_build_s"] = build_ref_table(ref, steps, packed)
            r.update(run(policy, ref if live else None, opt, steps, table, packed, args.warmup, config, device))
        except torch.cuda.OutOfMemoryError:
            r["error"] = "out of memory"
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out["results"].append(r)
        save()
        print(fmt_row(r), flush=True)
    print("\n" + md_table(out["results"], T))
    return out


def fmt_row(r: dict) -> str:
    step = None if "error" in r else f"{r['step_s']:.2f}s ({r['pairs_per_step']:.0f} pairs)"
    return packing_row(r, f"{r['mode']:>13}", step)


def md_table(results: list[dict], T: int) -> str:
    rows = [[r["mode"], T, r["error"]] if "error" in r else
            [r["mode"], T, f"{r['real_tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%", f"{r['step_s']:.2f}",
             f"{r['pairs_per_step']:.0f}", f"{100 * r['real_fraction']:.0f}%", f"{r['peak_mem_gb'] or 0:.1f}"]
            for r in results]
    return markdown_table(["mode", "T", "real tokens/s", "MFU", "step (s)", "pairs/step", "real / processed",
                           "peak GB"], rows)


if __name__ == "__main__":
    main()
