"""Spread calibration: the CRPS of every rescaled ensemble at once, and the factor it picks."""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import torch

from exp.calibration import SCALES, UNIT, apply_spread, best_scale, crps_by_spread_scale


def test_crps_by_spread_scale_matches_properscoring():
    """The CRPS of mean + s·(x − mean) for many s at once, against properscoring applied to
    each rescaled ensemble."""
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(30, 6, 5, 3, generator=g) * 0.7 + 0.2
    true = torch.randn(6, 5, 3, generator=g)
    scales = [0.5, 1.0, 1.37, 2.5]
    got = crps_by_spread_scale(samples, true, scales)  # (scales, variates)
    assert got.shape == (4, 3)
    mean = samples.mean(0)
    for k, s in enumerate(scales):
        scaled = (mean + s * (samples - mean)).double().numpy()
        ref = properscoring.crps_ensemble(true.double().numpy(), np.moveaxis(scaled, 0, -1))
        assert got[k].numpy() == pytest.approx(ref.sum((0, 1)), rel=1e-5)


@pytest.mark.parametrize("true_sigma", [0.2, 1.0, 5.0, 20.0])
def test_calibration_recovers_the_true_spread(true_sigma):
    """CRPS is proper: for a standard-normal ensemble and N(0, σ²) truths, the CRPS-optimal
    factor is σ. The grid must reach it, also far from 1, and applying it gives spread σ."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(400, 1, 1, 1, generator=g)  # one shared N(0, 1) ensemble
    samples = ((base - base.mean()) / base.std()).expand(400, 64, 48, 2).contiguous()
    true = torch.randn(64, 48, 2, generator=g) * true_sigma
    scale, _ = best_scale(crps_by_spread_scale(samples, true), "variate")
    assert scale.numpy() == pytest.approx([true_sigma] * 2, rel=0.08)
    assert SCALES[UNIT] == 1.0
    widened = apply_spread(samples.clone() + 3.0, scale)
    assert widened.mean(0).numpy() == pytest.approx(3.0, abs=1e-4)  # the mean does not move
    assert widened.std(0).mean().item() == pytest.approx(true_sigma, rel=0.08)


def test_global_mode_picks_one_factor_for_all_variates():
    g = torch.Generator().manual_seed(2)
    samples = torch.randn(50, 32, 8, 2, generator=g)
    true = torch.randn(32, 8, 2, generator=g) * torch.tensor([0.5, 2.0])
    each, _ = best_scale(crps_by_spread_scale(samples, true), "variate")
    (one,) = set(best_scale(crps_by_spread_scale(samples, true), "global")[0].tolist())
    assert each[0] < one < each[1]
