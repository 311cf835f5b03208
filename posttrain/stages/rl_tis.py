"""Truncated importance sampling (TIS) from the training forward, without TRL's old-logprob pass.

With vLLM's importance-sampling correction on, TRL 1.16 runs a no-grad forward over the whole
generation batch for `old_per_token_logps` and the ratio exp(old - engine logprob)
(trl/trainer/grpo_trainer.py, `_generate_and_score_completions`). When every generation batch
trains inside one optimizer step (TRL's own alignment test: gradient_accumulation_steps a multiple
of steps_per_generation x num_iterations), the weights that pass sees are the weights the training
forward sees, so old == the training forward's log-probs, detached: TRL uses exactly that when the
correction is off (`_compute_loss`: `per_token_logps.detach()`), and open-instruct does the same
with TIS on and one mini-batch (open_instruct/grpo_fast.py: `old_logprob = local_logprobs.detach()`,
then `exp(old_logprob - vllm_logprobs)` capped). The pass is a forward over every completion token,
about a third of the training time (10 s of a 45 s async step on an H100, 2026-12-07).

`tis_ratio` is TRL's ratio code; `GapStats` gathers the numbers TRL logged from that pass
(|engine - trainer| log-prob gap, ratio range) plus the k3 KL, overall and per policy lag, summed on
the device micro-batch by micro-batch and read once an optimizer step.
"""

from __future__ import annotations

import math

import torch


def tis_ratio(old: torch.Tensor, sampling: torch.Tensor, mask: torch.Tensor, mode: str,
              clip_min: float | None, clip_max: float | None) -> torch.Tensor:
    """TRL 1.16's vLLM importance-sampling ratio (grpo_trainer.py, `_generate_and_score_completions`):
    token modes (B, T), sequence modes (B, 1); a token the engine could not score (NaN) gets ratio 1.

    >>> old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    >>> eng = torch.log(torch.tensor([[0.25, 0.5, float("nan")]]))
    >>> tis_ratio(old, eng, torch.ones(1, 3), "token_truncate", None, 1.5).tolist()
    [[1.5, 1.0, 1.0]]
    >>> tis_ratio(old, eng, torch.ones(1, 3), "token_mask", None, 1.5).tolist()
    [[0.0, 1.0, 1.0]]
    >>> tis_ratio(old, eng, torch.tensor([[1.0, 1.0, 0.0]]), "sequence_truncate", None, 3.0).tolist()
    [[2.0]]
    """
    diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
    if mode in ("sequence_mask", "sequence_truncate"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode in ("sequence_truncate", "token_truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    if mode in ("sequence_mask", "token_mask"):
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)
    raise ValueError(f"unknown vllm_importance_sampling_mode {mode!r}")


class GapStats:
    """Engine-vs-trainer log-prob gap of one optimizer step, over completion tokens the engine scored.
    `add` per micro-batch (no host sync); `finish(gather)` once per step returns TRL's metric names
    (`sampling/sampling_logp_difference/*`, `sampling/importance_sampling_ratio/*`), `sampling/kl_k3`
    and, for rows with a policy lag, `async/{kl_k3,abs_logp_diff}_lag{n}`. Means are over all tokens
    of the step on every process (TRL averaged each process's mean).

    >>> s = GapStats(lag_slots=2)
    >>> lp = torch.log(torch.tensor([[0.5, 0.25]]))
    >>> s.add(lp, lp - 0.1, torch.ones(1, 2), torch.ones(1, 2), lags=torch.tensor([1]))
    >>> m = s.finish(lambda t: t[None])
    >>> round(m["sampling/sampling_logp_difference/mean"], 4), round(m["async/abs_logp_diff_lag1"], 4)
    (0.1, 0.1)
    >>> "async/kl_k3_lag0" in m, s.finish(lambda t: t[None])
    (False, {})
    """

    def __init__(self, lag_slots: int = 0, trl_logged: bool = False):
        """`lag_slots`: lags 0 .. lag_slots - 1 are told apart (async: async_steps + 1, the producer's
        staleness bound, rollout/producer.py); 0 for none. `trl_logged`: TRL's old-logprob pass ran
        and logged its own `sampling/*` gap keys, so `finish` returns only `sampling/kl_k3` and `async/*`."""
        self.sums = self.peaks = None  # device vectors: [n, |d|, k3, n_ratio, ratio, n_lag.., |d|_lag.., k3_lag..]
        self.slots, self.trl_logged = lag_slots, trl_logged

    def add(self, old, sampling, mask, ratio, lags: torch.Tensor | None = None) -> None:
        """One micro-batch: the training forward's log-probs (detached), the engine's, the completion
        mask, the TIS ratio and each row's policy lag (None outside async)."""
        ok = mask.bool() & ~torch.isnan(sampling)
        log_r = torch.where(ok, old - sampling, 0.0).float()
        k3, gap, w = log_r.exp() - 1 - log_r, log_r.abs(), ok.float()
        # TRL's entries of the ratio: masked tokens (token modes), every row (sequence modes). Masks,
        # not boolean indexing: indexing would wait on the GPU every micro-batch.
        r_on = mask.bool() if ratio.shape == mask.shape else torch.ones_like(ratio, dtype=torch.bool)
        r = ratio.float()
        inf = torch.tensor(math.inf, device=old.device)
        parts = [w.sum(), gap.sum(), k3.sum(), r_on.float().sum(), torch.where(r_on, r, 0.0).sum()]
        if self.slots:
            lags = torch.zeros(len(old), device=old.device) if lags is None else lags.to(old.device)
            slot = lags.clamp(0, self.slots - 1)  # the producer bounds the lag: the clamp only guards
            onehot = (slot[:, None] == torch.arange(self.slots, device=old.device)).float()  # (B, slots)
            parts += [onehot.T @ w.sum(1), onehot.T @ gap.sum(1), onehot.T @ k3.sum(1)]
        sums = torch.cat([p.reshape(-1) for p in parts])
        peak = (lambda x: x.max()) if gap.numel() else (lambda x: -inf)
        peaks = torch.stack([peak(torch.where(ok, gap, -inf)), peak(torch.where(r_on, r, -inf)),
                             peak(torch.where(r_on, -r, -inf))])
        if self.sums is None:
            self.sums, self.peaks = sums, peaks
        else:
            self.sums, self.peaks = self.sums + sums, torch.maximum(self.peaks, peaks)

    def finish(self, gather) -> dict[str, float]:
        """`gather(vector) -> (processes, len)` (accelerate's gather of a stacked vector)."""
        if self.sums is None:
            return {}
        sums, peaks, slots = self.sums, self.peaks, self.slots
        self.sums = self.peaks = None
        s = gather(sums[None]).view(-1, sums.numel()).sum(0).tolist()
        p = gather(peaks[None]).view(-1, 3).max(0).values.tolist()
        n, nr = max(s[0], 1.0), max(s[3], 1.0)
        out = {"sampling/sampling_logp_difference/mean": s[1] / n,
               "sampling/sampling_logp_difference/max": max(p[0], 0.0), "sampling/kl_k3": s[2] / n,
               "sampling/importance_sampling_ratio/mean": s[4] / nr,
               "sampling/importance_sampling_ratio/max": p[1] if s[3] else 0.0,
               "sampling/importance_sampling_ratio/min": -p[2] if s[3] else 0.0}
        if self.trl_logged:
            out = {"sampling/kl_k3": out["sampling/kl_k3"]}
        if slots:
            cnt, gap, k3 = s[5:5 + slots], s[5 + slots:5 + 2 * slots], s[5 + 2 * slots:5 + 3 * slots]
            for lag in range(slots):
                if cnt[lag]:
                    out[f"async/kl_k3_lag{lag}"] = k3[lag] / cnt[lag]
                    out[f"async/abs_logp_diff_lag{lag}"] = gap[lag] / cnt[lag]
        return out
