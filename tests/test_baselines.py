"""Tests for utils/baselines.py: closed-form answers for the fitted noise models and samplers."""

import math

import numpy as np
import pytest
import torch

from models.iTransformer import Normalizer
from utils import baselines as BL
from utils import metrics as M


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _corr_offdiag(samples: torch.Tensor) -> torch.Tensor:
    """Largest |Pearson correlation| between two different points of an (S, ...) ensemble."""
    flat = samples.reshape(samples.shape[0], -1).T  # (points, S)
    r = torch.corrcoef(flat)
    return (r - torch.eye(r.shape[0], dtype=r.dtype)).abs().max()


# --------------------------------------------------------------------------------------
# Window scale and its floor
# --------------------------------------------------------------------------------------


def test_window_scale_is_itransformer_normalizer_stdev_and_floored():
    g = _gen(0)
    x = torch.randn(5, 48, 3, generator=g) * torch.tensor([0.5, 2.0, 30.0]) + 7.0
    got = BL.window_scale(x, 0.0)
    assert got.shape == (5, 1, 3) and got.dtype == torch.float64
    ref = Normalizer(x.double()).stdev
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0.0)
    # a flat lookback has scale sqrt(1e-5) unfloored, and the floor (per variate) lifts it
    x[2, :, 1] = 4.2
    assert BL.window_scale(x, 0.0)[2, 0, 1].item() == pytest.approx(math.sqrt(1e-5), rel=1e-9)
    floor = torch.tensor([0.1, 0.5, 0.2])
    floored = BL.window_scale(x, floor)
    assert floored[2, 0, 1].item() == 0.5
    torch.testing.assert_close(floored, torch.maximum(BL.window_scale(x, 0.0), floor.double()))
    assert BL.window_scale(x, 1e9).eq(1e9).all()  # a scalar floor works too


def test_fit_scale_floor_is_low_quantile_per_variate():
    g = _gen(1)
    scales = torch.rand(400, 1, 3, generator=g, dtype=torch.float64) * torch.tensor([1, 10, 100])
    floor = BL.fit_scale_floor(scales, q=0.05)
    assert floor.shape == (3,)
    ref = np.quantile(scales[:, 0].numpy(), 0.05, axis=0)
    np.testing.assert_allclose(floor.numpy(), ref, rtol=1e-12)
    assert BL.fit_scale_floor(scales).numpy() == pytest.approx(
        np.quantile(scales[:, 0].numpy(), 0.01, axis=0), rel=1e-12
    )
    # applied through window_scale: flat windows get the floor, about 5% of windows are lifted
    x = torch.randn(400, 24, 3, generator=g, dtype=torch.float64) * scales
    x[:10] = 1.0  # ten flat lookbacks
    s = BL.window_scale(x, floor)
    torch.testing.assert_close(s[:10], floor.expand(10, 1, 3))
    assert (s >= floor).all()


# --------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------


def test_fit_scaled_gaussian_hand_case():
    # normalised residuals 3/1 = 3 and -4/2 = -2: ML sigma of a zero-mean Gaussian = RMS
    res = torch.tensor([3.0, -4.0]).reshape(2, 1, 1)
    scales = torch.tensor([1.0, 2.0]).reshape(2, 1, 1)
    assert BL.fit_scaled_gaussian(res, scales).item() == pytest.approx(math.sqrt(6.5), rel=1e-12)


def test_fit_scaled_gaussian_recovers_multiplier():
    g = _gen(2)
    b, h, n = 4000, 3, 2
    scales = torch.exp(torch.randn(b, 1, n, generator=g, dtype=torch.float64))
    c_true = torch.tensor([[1.7, 1.7], [1.7, 0.4], [3.0, 1.7]], dtype=torch.float64)
    res = c_true * scales * torch.randn(b, h, n, generator=g, dtype=torch.float64)
    c = BL.fit_scaled_gaussian(res, scales)
    assert c.shape == (h, n)
    # sd of the ML sigma: sigma / sqrt(2B)
    np.testing.assert_allclose(c.numpy(), c_true.numpy(), rtol=4.0 / math.sqrt(2 * b))


def test_residual_quantile_table_recovers_exponential_quantiles():
    g = _gen(3)
    b, h, n = 20000, 2, 2
    scales = torch.exp(torch.randn(b, 1, n, generator=g, dtype=torch.float64))
    z = torch.empty(b, h, n, dtype=torch.float64).exponential_(1.0, generator=g) - 1.0
    table = BL.fit_residual_quantiles(z * scales, scales)
    assert table.levels.shape == (101,) and table.values.shape == (101, h, n)
    np.testing.assert_allclose(table.levels.numpy(), np.linspace(0, 1, 101), atol=1e-15)
    # ends are the validation min and max of the normalised residuals
    torch.testing.assert_close(table.values[0], z.amin(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(table.values[-1], z.amax(0), rtol=1e-12, atol=1e-12)
    q = table.levels[1:-1].numpy()
    exact = -np.log1p(-q) - 1.0
    se = np.sqrt(q / ((1.0 - q) * b))  # asymptotic sd of the q quantile of Exp(1)
    err = np.abs(table.values[1:-1].numpy() - exact[:, None, None])
    assert (err < 5 * se[:, None, None]).all()


# --------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stratified", [False, True])
def test_sample_gaussian_std_and_independence(stratified):
    g = _gen(4)
    b, h, n, s = 3, 4, 2, 20000
    point = torch.randn(b, h, n, generator=g, dtype=torch.float64) * 5
    sigma = torch.rand(h, n, generator=g, dtype=torch.float64) + 0.3
    x = BL.sample_gaussian(point, sigma, s, _gen(5), stratified=stratified)
    assert x.shape == (s, b, h, n) and x.dtype == torch.float64
    torch.testing.assert_close(x.mean(0), point, rtol=0, atol=5 * float(sigma.max()) / s**0.5)
    std = x.std(0, unbiased=False)
    np.testing.assert_allclose(
        std.numpy(), sigma.expand(b, h, n).numpy(), rtol=5 / math.sqrt(2 * s)
    )
    assert _corr_offdiag(x) < 5 / math.sqrt(s)  # members independent across points
    # a per-window sigma (B, H, N) is used as given; same generator seed -> same ensemble
    sig3 = sigma * torch.arange(1, b + 1, dtype=torch.float64).reshape(b, 1, 1)
    x3 = BL.sample_gaussian(point, sig3, s, _gen(5), stratified=stratified)
    torch.testing.assert_close(x3 - point, (x - point) * sig3 / sigma)


def test_sample_residual_quantiles_stratified_and_independent():
    g = _gen(6)
    b, h, n, s = 4, 3, 2, 500
    scales = torch.rand(b, 1, n, generator=g, dtype=torch.float64) + 0.5
    z = torch.randn(3000, h, n, generator=g, dtype=torch.float64) ** 2  # skewed
    table = BL.fit_residual_quantiles(z, torch.ones(3000, 1, n))
    point = torch.randn(b, h, n, generator=g, dtype=torch.float64)
    x = BL.sample_residual_quantiles(point, scales, table, s, _gen(7))
    assert x.shape == (s, b, h, n)
    # each point's sorted members are the fitted quantiles at the levels (i + 0.5) / S
    u = (torch.arange(s, dtype=torch.float64) + 0.5) / s
    fitted = torch.stack(
        [
            torch.from_numpy(np.interp(u.numpy(), table.levels.numpy(), table.values[:, i, j]))
            for i in range(h)
            for j in range(n)
        ],
        -1,
    ).reshape(s, 1, h, n)
    torch.testing.assert_close(torch.sort(x, 0).values, point + scales * fitted)
    assert _corr_offdiag(x) < 5 / math.sqrt(s)  # a fresh permutation per point
    # the i.i.d. variant: same marginals in distribution, also independent
    xi = BL.sample_residual_quantiles(point, scales, table, 4000, _gen(8), stratified=False)
    assert _corr_offdiag(xi) < 5 / math.sqrt(4000)
    med = torch.median(xi, 0).values
    torch.testing.assert_close(med, point + scales * table.values[50], rtol=0, atol=0.15)


def _crps_uniform(lo, hi, y):
    """Closed-form CRPS of U(lo, hi) at y."""
    w = hi - lo
    zz = ((y - lo) / w).clamp(0.0, 1.0)
    inside = w * (zz * zz - zz + 1.0 / 3.0)
    outside = (y - (lo + hi) / 2).abs() - w / 6.0
    return torch.where((y >= lo) & (y <= hi), inside, outside)


@pytest.mark.parametrize(("stratified", "s", "rtol"), [(True, 1000, 1e-4), (False, 20000, 3e-2)])
def test_sample_residual_quantiles_crps_matches_fitted_distribution(stratified, s, rtol):
    """Normalised residuals spread evenly over [-1, 2]: the fitted distribution is exactly
    U(-1, 2) (linear quantile function), whose CRPS has a closed form."""
    g = _gen(9)
    nv, h, n = 2001, 2, 3
    grid = torch.linspace(-1.0, 2.0, nv, dtype=torch.float64)
    z = torch.stack([grid[torch.randperm(nv, generator=g)] for _ in range(h * n)], -1)
    z = z.reshape(nv, h, n)
    val_scales = torch.rand(nv, 1, n, generator=g, dtype=torch.float64) + 0.2
    table = BL.fit_residual_quantiles(z * val_scales, val_scales)
    torch.testing.assert_close(
        table.values, (-1.0 + 3.0 * table.levels).reshape(-1, 1, 1).expand(-1, h, n)
    )
    b = 6
    point = torch.randn(b, h, n, generator=g, dtype=torch.float64)
    scales = torch.rand(b, 1, n, generator=g, dtype=torch.float64) + 0.5
    y = point + scales * (torch.rand(b, h, n, generator=g, dtype=torch.float64) * 5 - 2)
    x = BL.sample_residual_quantiles(point, scales, table, s, _gen(10), stratified=stratified)
    got = M.crps_ensemble(x, y)
    exact = _crps_uniform(point - scales, point + 2 * scales, y)
    np.testing.assert_allclose(got.numpy(), exact.numpy(), rtol=rtol)


def test_point_mass_baseline_crps_is_mae():
    g = _gen(11)
    point = torch.randn(5, 4, 3, generator=g)
    y = torch.randn(5, 4, 3, generator=g)
    x = BL.sample_point(point)
    assert x.shape == (1, 5, 4, 3)
    torch.testing.assert_close(M.crps_ensemble(x, y), (point.double() - y.double()).abs())
    torch.testing.assert_close(
        M.energy_score(x, y),
        (point.double() - y.double()).flatten(1).norm(dim=1),
        rtol=1e-12,
        atol=0,
    )
    assert BL.sample_point(point, 3).shape == (3, 5, 4, 3)


def test_recipe_on_synthetic_validation_and_test():
    """Fit on validation windows whose noise is 1.7 x the lookback scale; the sampled test
    ensembles then score like the closed-form CRPS of N(point, (1.7 scale)^2)."""
    g = _gen(12)
    h, n, lookback = 8, 3, 24

    def windows(b):
        x = torch.randn(b, lookback, n, generator=g, dtype=torch.float64)
        x = x * torch.exp(torch.randn(b, 1, n, generator=g, dtype=torch.float64))
        point = torch.randn(b, h, n, generator=g, dtype=torch.float64)
        scale = BL.window_scale(x, 0.0)
        y = point + 1.7 * scale * torch.randn(b, h, n, generator=g, dtype=torch.float64)
        return x, point, y

    x_val, p_val, y_val = windows(3000)
    floor = BL.fit_scale_floor(BL.window_scale(x_val, 0.0))
    s_val = BL.window_scale(x_val, floor)
    c = BL.fit_scaled_gaussian(y_val - p_val, s_val)
    table = BL.fit_residual_quantiles(y_val - p_val, s_val)
    np.testing.assert_allclose(c.numpy(), 1.7, rtol=0.06)

    x_te, p_te, y_te = windows(400)
    s_te = BL.window_scale(x_te, floor)
    exact = float(M.crps_gaussian(p_te, 1.7 * s_te, y_te).mean())
    gauss = BL.sample_gaussian(p_te, c * s_te, 100, _gen(13))
    empir = BL.sample_residual_quantiles(p_te, s_te, table, 100, _gen(14))
    assert float(M.crps_ensemble(gauss, y_te).mean()) == pytest.approx(exact, rel=0.03)
    assert float(M.crps_ensemble(empir, y_te).mean()) == pytest.approx(exact, rel=0.03)
    point_mass = float(M.crps_ensemble(BL.sample_point(p_te), y_te).mean())
    assert point_mass > 1.3 * exact  # a point forecast is beaten by its calibrated spread
