"""TIS from the training forward (posttrain/stages/rl_tis.py): the logged gap numbers. The ratio,
loss and gradients against TRL's own pass are in test_rl_async.py."""

import pytest
import torch

@pytest.mark.parametrize("mode", ["token_truncate", "sequence_truncate"])
def test_gap_stats_match_the_indexed_computation(mode):
    """GapStats sums with masks (no GPU wait); the numbers are TRL's, taken with boolean indexing:
    mean/max |engine - trainer| over scored completion tokens, the ratio's range over TRL's entries,
    k3 per token, and each lag's share."""
    from posttrain.stages.rl_tis import GapStats, tis_ratio
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(6, 9, generator=g) * 3
    samp = old + torch.randn(6, 9, generator=g) * 0.3
    samp[1, 2] = float("nan")
    mask = (torch.rand(6, 9, generator=g) > 0.3).float()
    old[mask == 0], samp[mask == 0] = 50.0, -50.0  # padding: must not count anywhere
    lags = torch.tensor([0, 1, 1, 2, 0, 1])
    ratio = tis_ratio(old, samp, mask, mode, None, 2.0)
    s = GapStats(lag_slots=3)
    s.add(old[:3], samp[:3], mask[:3], ratio[:3], lags[:3])
    s.add(old[3:], samp[3:], mask[3:], ratio[3:], lags[3:])
    m = s.finish(lambda t: t[None])
    ok = mask.bool() & ~torch.isnan(samp)
    d = (old - samp)[ok]
    r = ratio[mask.bool()] if mode.startswith("token") else ratio.flatten()
    assert m["sampling/sampling_logp_difference/mean"] == pytest.approx(d.abs().mean().item(), rel=1e-5)
    assert m["sampling/sampling_logp_difference/max"] == pytest.approx(d.abs().max().item(), rel=1e-5)
    assert m["sampling/kl_k3"] == pytest.approx((d.exp() - 1 - d).mean().item(), rel=1e-5)
    assert (m["sampling/importance_sampling_ratio/min"], m["sampling/importance_sampling_ratio/max"]) == \
        pytest.approx((r.min().item(), r.max().item()), rel=1e-5)
    assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx(r.mean().item(), rel=1e-5)
    for lag in range(3):
        sel = ok & (lags == lag)[:, None]
        assert m[f"async/abs_logp_diff_lag{lag}"] == pytest.approx((old - samp)[sel].abs().mean().item(), rel=1e-5)
