"""The evaluation's baselines (exp/baselines.py), recomputed independently: σ with numpy, the
Gaussian CRPS in closed form with properscoring, the quantile baseline against numpy.quantile."""

from __future__ import annotations

import numpy as np
import properscoring as ps
import pytest
import torch

from exp import baselines

W, H, N, S = 400, 6, 3, 100


@pytest.fixture(scope="module")
def validation():
    """Residuals whose spread is 0.5, 1 and 2 times each window's lookback σ (per variate),
    with lookback σ spread over a decade; a few flat lookbacks in variate 0."""
    rng = np.random.default_rng(0)
    scales = np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=(W, 1, N)))
    residuals = rng.standard_normal((W, H, N)) * scales * np.array([0.5, 1.0, 2.0])
    scales[:4, 0, 0] = 1e-3  # flat lookbacks, whose futures are not flat
    return torch.tensor(residuals), torch.tensor(scales)


def test_gaussian_sigma_is_the_validation_rmse_per_step_and_variate(validation):
    residuals, scales = validation
    params = baselines.fit(residuals, scales)
    rmse = np.sqrt((residuals.numpy() ** 2).mean(axis=0))  # (H, N)
    assert np.allclose(params["sigma"].numpy(), rmse, rtol=1e-12)


def test_scaled_gaussian_recovers_the_multiplier_and_floors_flat_lookbacks(validation):
    residuals, scales = validation
    params = baselines.fit(residuals, scales)
    c = params["c"].numpy()
    assert np.allclose(c.mean(0), [0.5, 1.0, 2.0], rtol=0.08)
    assert params["scale_floor"][0] > 1e-3  # the flat lookbacks are lifted


def test_baseline_ensembles_score_their_closed_form_crps(validation):
    """Each Gaussian baseline's ensemble CRPS equals properscoring's closed-form Gaussian CRPS
    with the fitted σ; the point mass scores its absolute error; the quantile baseline's
    ensemble has the fitted quantiles as its own quantiles."""
    residuals, scales = validation
    params = baselines.fit(residuals, scales)
    rng = np.random.default_rng(1)
    B = 32
    point = torch.tensor(rng.standard_normal((B, H, N)))
    scale = torch.tensor(np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=(B, 1, N))))
    y = point + torch.tensor(rng.standard_normal((B, H, N)))
    drawn = baselines.ensembles(params, point, scale, S, 0, torch.Generator().manual_seed(2))
    assert set(drawn) == set(baselines.NAMES)

    def ensemble_crps(samples):
        return ps.crps_ensemble(y.numpy(), np.moveaxis(samples.numpy(), 0, -1)).mean()

    sigma = params["sigma"].numpy()
    closed = ps.crps_gaussian(y.numpy(), point.numpy(), np.broadcast_to(sigma, y.shape)).mean()
    assert ensemble_crps(drawn["itransformer_gaussian"][0]) == pytest.approx(closed, rel=0.01)
    c_sigma = params["c"].numpy() * np.maximum(scale.numpy(), params["scale_floor"].numpy())
    closed = ps.crps_gaussian(y.numpy(), point.numpy(), c_sigma).mean()
    assert ensemble_crps(drawn["scaled_gaussian"][0]) == pytest.approx(closed, rel=0.01)
    samples, mass_point = drawn["itransformer"]
    assert ensemble_crps(samples) == pytest.approx((y - point).abs().mean().item(), rel=1e-9)
    for _, p in drawn.values():
        assert torch.equal(p, point)  # MSE and MAE score the point forecast itself

    samples = drawn["residual_quantiles"][0].numpy()  # (S, B, H, N)
    z = (samples - point.numpy()) / np.maximum(scale.numpy(), params["scale_floor"].numpy())
    floored = np.maximum(scales.numpy(), params["scale_floor"].numpy())
    reference = np.quantile(residuals.numpy() / floored, [0.1, 0.5, 0.9], axis=0)  # (3, H, N)
    got = np.quantile(z, [0.1, 0.5, 0.9], axis=0).mean(1)  # over windows: (3, H, N)
    assert np.allclose(got, reference, atol=0.05 * np.abs(reference).max())


def test_validation_crps_ranks_the_baselines(validation):
    """On residuals whose spread follows the lookback σ, the lookback-scaled baselines beat the
    fixed σ on the validation CRPS that picks the best baseline."""
    residuals, scales = validation
    scores = dict(zip(baselines.NAMES, baselines.fit(residuals, scales)["val_crps"].tolist()))
    assert scores["scaled_gaussian"] < scores["itransformer_gaussian"] < scores["itransformer"]
    assert scores["residual_quantiles"] < scores["itransformer_gaussian"]


def test_a_mostly_flat_variate_gets_a_floor_above_its_median():
    """A variate whose lookback is flat in 80% of windows (rain) while its residual does not
    depend on the lookback: the floor must rise above the median σ (else c ≈ 1/√1e-5 inflates
    every active window's spread ~300 times); the fitted σ is then close to the residual's 1 and
    the scaled Gaussian scores like the unscaled one on validation."""
    rng = np.random.default_rng(3)
    scales = np.full((W, 1, 1), np.sqrt(1e-5))
    active = rng.random(W) < 0.2
    scales[active, 0, 0] = np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=active.sum()))
    residuals = rng.standard_normal((W, H, 1))
    params = baselines.fit(torch.tensor(residuals), torch.tensor(scales))
    floor = params["scale_floor"].item()
    assert floor > np.median(scales) * 10
    sigma = params["c"].numpy() * np.maximum(scales, floor)  # (W, H, 1)
    assert sigma.min() > 0.5 and sigma.max() < 2.0
    scores = dict(zip(baselines.NAMES, params["val_crps"].tolist()))
    assert scores["scaled_gaussian"] < 1.05 * scores["itransformer_gaussian"]
    assert scores["residual_quantiles"] < 1.05 * scores["itransformer_gaussian"]
