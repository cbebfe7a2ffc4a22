"""Tests for utils/metrics.py: reference libraries, hand cases, and streaming equality."""

import math

import numpy as np
import properscoring as ps
import pytest
import scoringrules as sr
import torch
from scipy.stats import norm

from utils import metrics as M


def _rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------
# TSLib point metrics
# --------------------------------------------------------------------------------------


def test_tslib_metric_order_and_values():
    true = np.array([1.0, 2.0, 4.0])
    pred = np.array([2.0, 2.0, 2.0])
    # errors -1, 0, 2
    mae, mse, rmse, mape, mspe = M.metric(pred, true)
    assert mae == pytest.approx(1.0)
    assert mse == pytest.approx(5.0 / 3.0)
    assert rmse == pytest.approx(math.sqrt(5.0 / 3.0))
    assert mape == pytest.approx((1.0 + 0.0 + 0.5) / 3.0)
    assert mspe == pytest.approx((1.0 + 0.0 + 0.25) / 3.0)


def test_tslib_rse_corr():
    rng = _rng(1)
    true = rng.normal(size=(50, 4))
    pred = true + 0.1 * rng.normal(size=(50, 4))
    rse = M.RSE(pred, true)
    assert rse == pytest.approx(
        np.sqrt(((true - pred) ** 2).sum()) / np.sqrt(((true - true.mean()) ** 2).sum())
    )
    assert M.RSE(true, true) == 0.0
    # TSLib's CORR is its own (non-Pearson) formula; only check it is finite and positive.
    assert np.isfinite(M.CORR(pred, true)) and M.CORR(pred, true) > 0


# --------------------------------------------------------------------------------------
# Ensemble CRPS
# --------------------------------------------------------------------------------------


def test_crps_hand_cases():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1)
    y = torch.full((1, 1, 1), 3.5)
    # E|X-y| = (2.5+1.5+0.5+0.5)/4 = 1.25; sum_{i,j}|xi-xj| = 20
    # standard: 1.25 - 0.5*20/16 = 0.625; fair: 1.25 - 0.5*20/12 = 0.416667
    assert M.crps_ensemble(x, y).item() == pytest.approx(0.625, rel=1e-12)
    assert M.crps_ensemble(x, y, fair=True).item() == pytest.approx(1.25 - 10.0 / 12.0, rel=1e-12)
    one = torch.tensor([2.0]).reshape(1, 1, 1, 1)
    assert M.crps_ensemble(one, y).item() == pytest.approx(1.5)
    with pytest.raises(ValueError):
        M.crps_ensemble(one, y, fair=True)


@pytest.mark.parametrize("s", [1, 2, 3, 50, 100])
def test_crps_ensemble_vs_references(s):
    rng = _rng(s)
    b, h, n = 3, 5, 4
    samples = rng.normal(1.0, 2.0, size=(s, b, h, n))
    y = rng.normal(1.0, 2.0, size=(b, h, n))
    ours = M.crps_ensemble(torch.from_numpy(samples), torch.from_numpy(y)).numpy()
    fct = np.moveaxis(samples, 0, -1)  # ensemble axis last
    ref_ps = ps.crps_ensemble(y, fct)
    ref_sr = sr.crps_ensemble(y, fct, m_axis=-1, estimator="qd", backend="numpy")
    assert ours.shape == (b, h, n)
    np.testing.assert_allclose(ours, ref_ps, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours, ref_sr, rtol=1e-6, atol=1e-12)
    if s >= 2:
        fair = M.crps_ensemble(torch.from_numpy(samples), torch.from_numpy(y), fair=True)
        ref_fair = sr.crps_ensemble(y, fct, m_axis=-1, estimator="fair", backend="numpy")
        np.testing.assert_allclose(fair.numpy(), ref_fair, rtol=1e-6, atol=1e-12)
    if s == 1:
        np.testing.assert_allclose(ours, np.abs(samples[0] - y), rtol=1e-12)


def test_crps_ensemble_float32_input():
    rng = _rng(7)
    samples = rng.normal(size=(20, 2, 3, 2)).astype(np.float32)
    y = rng.normal(size=(2, 3, 2)).astype(np.float32)
    ours = M.crps_ensemble(torch.from_numpy(samples), torch.from_numpy(y))
    assert ours.dtype == torch.float64
    ref = ps.crps_ensemble(y.astype(np.float64), np.moveaxis(samples, 0, -1).astype(np.float64))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6)


# --------------------------------------------------------------------------------------
# Gaussian CRPS
# --------------------------------------------------------------------------------------


def test_crps_gaussian_vs_properscoring_and_point_mass():
    rng = _rng(3)
    mu = rng.normal(size=(4, 6, 3))
    sigma = rng.uniform(0.1, 3.0, size=(4, 6, 3))
    y = rng.normal(size=(4, 6, 3)) * 2
    ours = M.crps_gaussian(torch.from_numpy(mu), torch.from_numpy(sigma), torch.from_numpy(y))
    np.testing.assert_allclose(ours.numpy(), ps.crps_gaussian(y, mu, sigma), rtol=1e-10)
    zero = M.crps_gaussian(torch.from_numpy(mu), torch.zeros(1), torch.from_numpy(y))
    assert torch.isfinite(zero).all()
    np.testing.assert_allclose(zero.numpy(), np.abs(mu - y), rtol=1e-12)


def test_large_gaussian_ensemble_converges_to_closed_form():
    # deterministic "quantile ensemble" x_i = mu + sigma * Phi^-1((i - 0.5)/S)
    s = 20000
    mu = torch.tensor([[[0.3, -1.0]]], dtype=torch.float64)
    sigma = torch.tensor([[[1.5, 0.2]]], dtype=torch.float64)
    y = torch.tensor([[[1.1, -1.0]]], dtype=torch.float64)
    u = (torch.arange(1, s + 1, dtype=torch.float64) - 0.5) / s
    samples = mu + sigma * torch.special.ndtri(u).reshape(s, 1, 1, 1)
    np.testing.assert_allclose(
        M.crps_ensemble(samples, y).numpy(), M.crps_gaussian(mu, sigma, y).numpy(), rtol=1e-3
    )


# --------------------------------------------------------------------------------------
# Quantile-normalised CRPS
# --------------------------------------------------------------------------------------


def test_crps_quantile_normalized_hand_case():
    # Two windows, one step, one variate, S = 2, levels (0.25, 0.75).
    # window 1: samples {0, 2}, y = 1:  qhat_.25 = 0.5, qhat_.75 = 1.5
    #   QL_.25 = 2|(1-0.5)(0-0.25)| = 0.25 ; QL_.75 = 2|(1-1.5)(1-0.75)| = 0.25
    # window 2: samples {-1, 3}, y = -2:  qhat_.25 = 0, qhat_.75 = 2
    #   QL_.25 = 2|(-2-0)(1-0.25)| = 3    ; QL_.75 = 2|(-2-2)(1-0.75)| = 2
    # sum|y| = 3 ; result = mean(3.25/3, 2.25/3) = 5.5/6
    samples = torch.tensor([[0.0, -1.0], [2.0, 3.0]]).reshape(2, 2, 1, 1)
    y = torch.tensor([1.0, -2.0]).reshape(2, 1, 1)
    got = M.crps_quantile_normalized(samples, y, quantile_levels=(0.25, 0.75))
    assert got == pytest.approx(5.5 / 6.0, rel=1e-12)
    terms = M.quantile_loss_terms(M.sample_quantiles(samples, (0.25, 0.75)), y, (0.25, 0.75))
    np.testing.assert_allclose(terms.numpy(), [3.25, 2.25], rtol=1e-12)


def _csdi_reference(forecast, target):
    """numpy transcription of CSDI calc_quantile_CRPS (forecast (S,B,H,N), no mask/scale)."""
    quantiles = np.arange(0.05, 1.0, 0.05)
    denom = np.sum(np.abs(target))
    crps = 0.0
    for q in quantiles:
        q_pred = np.quantile(forecast, q, axis=0)
        q_loss = 2 * np.sum(np.abs((q_pred - target) * ((target <= q_pred) * 1.0 - q)))
        crps += q_loss / denom
    return crps / len(quantiles)


def test_crps_quantile_normalized_vs_csdi_loop():
    rng = _rng(11)
    samples = rng.normal(0.5, 1.0, size=(37, 4, 6, 5))
    y = rng.normal(0.5, 1.0, size=(4, 6, 5))
    ts, ty = torch.from_numpy(samples), torch.from_numpy(y)
    assert M.crps_quantile_normalized(ts, ty) == pytest.approx(
        _csdi_reference(samples, y), rel=1e-10
    )
    assert M.crps_sum_normalized(ts, ty) == pytest.approx(
        _csdi_reference(samples.sum(-1), y.sum(-1)), rel=1e-10
    )
    # float32 input gives the same up to float32 rounding
    got32 = M.crps_quantile_normalized(ts.float(), ty.float())
    assert got32 == pytest.approx(_csdi_reference(samples, y), rel=1e-5)


def test_sample_quantiles_match_torch_quantile():
    x = torch.randn(13, 3, 4, 2, dtype=torch.float64)
    lv = [0.0, 0.05, 0.37, 0.5, 0.95, 1.0]
    ref = torch.quantile(x, torch.tensor(lv, dtype=torch.float64), dim=0)
    got = M.sample_quantiles(x, lv)
    assert got.shape == (6, 3, 4, 2)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_std_matches_numpy(dtype):
    g = torch.Generator().manual_seed(0)
    # 9 samples of 600 x 700 values: blocks of 2 samples, so several blocks and a last short one
    x = 1e3 + 2.5 * torch.randn(9, 600, 700, generator=g, dtype=torch.float64)
    x = x.to(dtype)
    ref = np.std(x.double().numpy(), axis=0)  # float64, population (ddof 0)
    got = M.sample_std(x)
    assert got.dtype == dtype and got.shape == (600, 700)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=tol)
    assert torch.equal(M.sample_std(x[:1]), torch.zeros(600, 700, dtype=dtype))  # one sample


def test_gaussian_crps_sum_matches_large_ensemble():
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(4, 5, 3, generator=g, dtype=torch.float64) + 2.0
    sigma = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.2
    y = mu + sigma * torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    samples = mu + sigma * torch.randn(20000, 4, 5, 3, generator=g, dtype=torch.float64)
    exact_sum = M.gaussian_crps_sum_normalized(mu, sigma, y)
    assert M.crps_sum_normalized(samples, y) == pytest.approx(exact_sum, rel=2e-2)
    exact = M.gaussian_crps_quantile_normalized(mu, sigma, y)
    assert M.crps_quantile_normalized(samples, y) == pytest.approx(exact, rel=2e-2)


# --------------------------------------------------------------------------------------
# Coverage / sharpness / reliability
# --------------------------------------------------------------------------------------


def test_coverage_and_sharpness_standard_normal():
    g = torch.Generator().manual_seed(0)
    b, h, n, s = 10, 20, 50, 500
    npts = b * h * n
    samples = torch.randn(s, b, h, n, generator=g)
    y = torch.randn(b, h, n, generator=g)
    for level in (0.5, 0.9):
        tol = 4 * math.sqrt(level * (1 - level) / npts) + 0.005
        assert M.interval_coverage(samples, y, level) == pytest.approx(level, abs=tol)
        mu, sig = torch.zeros(b, h, n), torch.ones(h, n)
        assert M.gaussian_interval_coverage(mu, sig, y, level) == pytest.approx(level, abs=tol)
    width = 2 * norm.ppf(0.95)
    assert M.interval_width(samples, 0.9) == pytest.approx(width, abs=0.02)
    assert M.gaussian_interval_width(torch.ones(3, 4), 0.9) == pytest.approx(width, rel=1e-12)
    nominal, cov = M.reliability_curve(samples, y)
    assert nominal == pytest.approx([0.1 * k for k in range(1, 10)])
    tol = 4 * math.sqrt(0.25 / npts) + 0.005
    np.testing.assert_allclose(cov, nominal, atol=tol)
    _, gcov = M.gaussian_reliability_curve(torch.zeros(b, h, n), torch.ones(1), y)
    np.testing.assert_allclose(gcov, nominal, atol=tol)


def test_coverage_inclusive_bounds():
    samples = torch.tensor([0.0, 1.0, 2.0]).reshape(3, 1, 1, 1)
    # central 100% interval = [0, 2]; y on the bound counts as covered
    assert M.interval_coverage(samples, torch.full((1, 1, 1), 2.0), 1.0) == 1.0
    assert M.interval_coverage(samples, torch.full((1, 1, 1), 2.01), 1.0) == 0.0
    assert M.interval_width(samples, 1.0) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------
# Joint scores: energy score and variogram score
# --------------------------------------------------------------------------------------


def _sr_es(samples, y, fair):
    """scoringrules' es_ensemble on the flattened (H*N) block: fct (B, S, D), obs (B, D)."""
    s, b = samples.shape[:2]
    fct = samples.double().reshape(s, b, -1).permute(1, 0, 2).numpy()
    obs = y.double().reshape(b, -1).numpy()
    return sr.es_ensemble(obs, fct, estimator="fair" if fair else "nrg", backend="numpy")


def _sr_vs(samples, y, p, over, fair):
    """scoringrules' vs_ensemble (w = None: all ordered pairs) on the chosen vectors."""
    x, yy = samples.double(), y.double()
    s, b, h, n = x.shape
    if over == "time":  # vectors of H per (window, variate)
        fct, obs = x.permute(1, 3, 0, 2).numpy(), yy.permute(0, 2, 1).numpy()
    elif over == "variates":  # vectors of N per (window, step)
        fct, obs = x.permute(1, 2, 0, 3).numpy(), yy.numpy()
    else:
        fct, obs = x.reshape(s, b, 1, h * n).permute(1, 2, 0, 3).numpy(), yy.reshape(b, 1, -1)
        obs = obs.numpy()
    est = "fair" if fair else "nrg"
    return sr.vs_ensemble(obs, fct, p=p, estimator=est, backend="numpy").sum(-1)


def test_energy_score_hand_case():
    # X1 = (0, 0), X2 = (3, 4), y = (0, 4):  ||X1 - y|| = 4, ||X2 - y|| = 3 -> E = 3.5
    # ||X1 - X2|| = 5: standard 3.5 - 0.5 * 10 / 4 = 2.25; fair 3.5 - 0.5 * 10 / 2 = 1.0
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]]).reshape(2, 1, 1, 2)
    y = torch.tensor([0.0, 4.0]).reshape(1, 1, 2)
    assert M.energy_score(x, y).item() == pytest.approx(2.25, rel=1e-12)
    assert M.energy_score(x, y, fair=True).item() == pytest.approx(1.0, rel=1e-12)
    # the window is one vector over steps and variates alike: (H, N) = (2, 1) is the same
    assert M.energy_score(x.reshape(2, 1, 2, 1), y.reshape(1, 2, 1)).item() == pytest.approx(2.25)
    assert M.energy_score(x[:1], y).item() == pytest.approx(4.0)  # S = 1: the error norm
    with pytest.raises(ValueError):
        M.energy_score(x[:1], y, fair=True)


@pytest.mark.parametrize("fair", [False, True])
@pytest.mark.parametrize("s", [1, 2, 17])
def test_energy_score_matches_scoringrules(s, fair):
    if fair and s == 1:
        return
    g = torch.Generator().manual_seed(s)
    x = torch.randn(s, 6, 5, 4, generator=g, dtype=torch.float64) * 3 + 100.0
    y = torch.randn(6, 5, 4, generator=g, dtype=torch.float64) + 100.0
    ref = _sr_es(x, y, fair)
    got = M.energy_score(x, y, fair=fair)
    assert got.shape == (6,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    # chunked over windows (one window at a time) and float32 input
    one = M.energy_score(x, y, fair=fair, max_chunk_elems=1)
    np.testing.assert_allclose(one.numpy(), ref, rtol=1e-12)
    f32 = M.energy_score(x.float(), y.float(), fair=fair)
    np.testing.assert_allclose(f32.numpy(), _sr_es(x.float(), y.float(), fair), rtol=1e-10)


def test_variogram_score_hand_case():
    # one vector of D = 2 (one step, two variates): X1 = (0, 1), X2 = (0, 4), y = (1, 0)
    # p = 0.5: |y1 - y2|^.5 = 1, E|X1 - X2|^.5 = (1 + 2) / 2 = 1.5 -> both ordered pairs:
    #   VS = 2 (1 - 1.5)^2 = 0.5   (scoringrules' convention: sum over all i, j)
    # p = 1: E|X1 - X2| = 2.5 -> VS = 2 (1 - 2.5)^2 = 4.5
    # fair, p = 1, y = (0, 0): member variograms a_1 = 1, a_2 = 4, observed 0, per pair
    #   E_m (a_m - 0)^2 - 1/2 sum_{m != m'} (a_m - a_m')^2 / (S (S - 1)) = 8.5 - 4.5 = 4
    #   -> VS = 8 (the standard estimator: 2 (0 - 2.5)^2 = 12.5)
    x = torch.tensor([[0.0, 1.0], [0.0, 4.0]]).reshape(2, 1, 1, 2)
    y = torch.tensor([1.0, 0.0]).reshape(1, 1, 2)
    assert M.variogram_score(x, y, over="variates").item() == pytest.approx(0.5, rel=1e-12)
    assert M.variogram_score(x, y, p=1.0, over="variates").item() == pytest.approx(4.5)
    y0 = torch.zeros(1, 1, 2)
    assert M.variogram_score(x, y0, p=1.0, over="variates").item() == pytest.approx(12.5)
    assert M.variogram_score(x, y0, p=1.0, over="variates", fair=True).item() == pytest.approx(8)
    # the same numbers as a temporal vector (H = 2, N = 1) and as the whole window
    xt, yt = x.reshape(2, 1, 2, 1), y.reshape(1, 2, 1)
    assert M.variogram_score(xt, yt, over="time").item() == pytest.approx(0.5, rel=1e-12)
    assert M.variogram_score(x, y, over="joint").item() == pytest.approx(0.5, rel=1e-12)
    # over="time" with N = 2 variates of one step each: no pairs, score 0
    assert M.variogram_score(x, y, over="time").item() == 0.0
    with pytest.raises(ValueError):
        M.variogram_score(x, y, over="steps")


@pytest.mark.parametrize("over", ["time", "variates", "joint"])
@pytest.mark.parametrize("p", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("fair", [False, True])
def test_variogram_score_matches_scoringrules(over, p, fair):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, 6, 5, generator=g, dtype=torch.float64).cumsum(2)
    y = torch.randn(4, 6, 5, generator=g, dtype=torch.float64).cumsum(1)
    ref = _sr_vs(x, y, p, over, fair)
    got = M.variogram_score(x, y, p=p, over=over, fair=fair)
    assert got.shape == (4,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11)
    tiny = M.variogram_score(x, y, p=p, over=over, fair=fair, max_chunk_elems=1)
    np.testing.assert_allclose(tiny.numpy(), ref, rtol=1e-11)


def test_variogram_score_row_blocks_for_long_vectors():
    """D = 400 > sqrt(_VS_BLOCK): each vector's D x D variogram is built in row blocks."""
    assert M._VS_BLOCK < 400 * 400
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 40, 10, generator=g, dtype=torch.float64)
    y = torch.randn(2, 40, 10, generator=g, dtype=torch.float64)
    for fair in (False, True):
        got = M.variogram_score(x, y, over="joint", fair=fair)
        np.testing.assert_allclose(got.numpy(), _sr_vs(x, y, 0.5, "joint", fair), rtol=1e-11)


def test_joint_scores_are_proper_for_dependence():
    """Truth with perfectly correlated steps: an ensemble with the right marginals but
    independent steps scores worse on ES and VS than the correlated one; the CRPS (marginal)
    cannot tell them apart."""
    g = torch.Generator().manual_seed(5)
    s, b, h = 200, 300, 12
    y = torch.randn(b, 1, 1, generator=g, dtype=torch.float64).expand(b, h, 1)
    joint = torch.randn(s, b, 1, 1, generator=g, dtype=torch.float64).expand(s, b, h, 1)
    indep = torch.randn(s, b, h, 1, generator=g, dtype=torch.float64)
    assert float(M.crps_ensemble(joint, y).mean()) == pytest.approx(
        float(M.crps_ensemble(indep, y).mean()), rel=0.05
    )
    assert M.energy_score(joint, y).mean() < 0.9 * M.energy_score(indep, y).mean()
    assert M.variogram_score(joint, y).mean() < 0.1 * M.variogram_score(indep, y).mean()


def test_window_scores():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(11, 5, 4, 3, generator=g)
    y = torch.randn(5, 4, 3, generator=g)
    ws = M.window_scores(x, y)
    assert set(ws) == set(M.WINDOW_KEYS)
    torch.testing.assert_close(ws["crps"], M.crps_ensemble(x, y).mean((1, 2)))
    torch.testing.assert_close(ws["energy_score"], M.energy_score(x, y))
    torch.testing.assert_close(ws["variogram_score"], M.variogram_score(x, y))
    ws1 = M.window_scores(x, y, p=1.0, over="variates")
    torch.testing.assert_close(ws1["variogram_score"], M.variogram_score(x, y, 1.0, "variates"))


# --------------------------------------------------------------------------------------
# Moving-block bootstrap of a paired relative difference
# --------------------------------------------------------------------------------------


def _ar1(n, phi, rng):
    e = rng.normal(size=n)
    out = np.empty(n)
    out[0] = e[0] / math.sqrt(1 - phi * phi)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + e[t]
    return out


def test_block_bootstrap_identical_scores():
    b = np.abs(_rng(0).normal(size=300)) + 0.5
    assert M.block_bootstrap_ci(b, b.copy()) == (0.0, 0.0, 0.0)
    assert M.block_bootstrap_ci(b, b, circular=True) == (0.0, 0.0, 0.0)


def test_block_bootstrap_detects_ten_percent_gain():
    rng = _rng(1)
    b = rng.exponential(size=500) + 1.0
    noise = rng.normal(scale=0.02, size=500)
    a = 0.9 * b + (noise - noise.mean())  # mean(a) / mean(b) - 1 = -0.1 exactly
    rel, low, high = M.block_bootstrap_ci(a, b)
    assert rel == pytest.approx(-0.1, abs=1e-12)
    assert low < -0.1 < high < 0.0
    assert high - low < 0.01
    # the same data in torch gives the same answer; the seed fixes the replicates
    assert M.block_bootstrap_ci(torch.from_numpy(a), torch.from_numpy(b)) == (rel, low, high)
    assert M.block_bootstrap_ci(a, b, seed=1) != (rel, low, high)


def test_block_bootstrap_coverage_under_the_null():
    hits = 0
    for seed in range(50):
        rng = _rng(100 + seed)
        a = rng.exponential(size=500)
        b = rng.exponential(size=500)
        _, low, high = M.block_bootstrap_ci(a, b, n_boot=400, seed=seed)
        hits += low <= 0.0 <= high
    assert hits >= 45  # nominal 95%


def test_block_bootstrap_widens_for_autocorrelated_scores():
    rng = _rng(2)
    n = 500
    b = 10.0 + _ar1(n, 0.9, rng)
    a = b + 0.5 * _ar1(n, 0.9, rng)  # paired difference with phi = 0.9 serial correlation
    assert M.default_block_length(n) == 8
    _, lo_b, hi_b = M.block_bootstrap_ci(a, b)
    _, lo_1, hi_1 = M.block_bootstrap_ci(a, b, block=1)
    _, lo_c, hi_c = M.block_bootstrap_ci(a, b, circular=True)
    assert hi_b - lo_b > 1.8 * (hi_1 - lo_1)
    assert hi_c - lo_c > 1.8 * (hi_1 - lo_1)
    # the i.i.d. interval of independent differences is not widened by blocks
    a_iid = b + 0.5 * rng.normal(size=n)
    _, lo_b, hi_b = M.block_bootstrap_ci(a_iid, b)
    _, lo_1, hi_1 = M.block_bootstrap_ci(a_iid, b, block=1)
    assert hi_b - lo_b == pytest.approx(hi_1 - lo_1, rel=0.25)


def test_block_bootstrap_errors():
    with pytest.raises(ValueError):
        M.block_bootstrap_ci([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        M.block_bootstrap_ci([1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError):
        M.block_bootstrap_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], block=4)


# --------------------------------------------------------------------------------------
# Streaming accumulator
# --------------------------------------------------------------------------------------

SCALAR_KEYS = [
    "mse",
    "mae",
    "rmse",
    "crps",
    "crps_fair",
    "crps_norm",
    "crps_sum",
    "coverage_50",
    "coverage_90",
    "sharpness_90",
    "pred_std",
    "energy_score",
    "variogram_score",
]


def _assert_results_close(a, b, rtol=1e-10):
    assert set(a) == set(b)
    for k in SCALAR_KEYS:
        assert a[k] == pytest.approx(b[k], rel=rtol, abs=1e-12), k
    for k in ("crps_per_step", "crps_per_variate", "mse_per_variate"):
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, err_msg=k)
    assert a["reliability"]["nominal"] == b["reliability"]["nominal"]
    np.testing.assert_allclose(a["reliability"]["coverage"], b["reliability"]["coverage"])
    assert a["n_windows"] == b["n_windows"]


def test_accumulator_samples_streams_exactly():
    g = torch.Generator().manual_seed(2)
    s, h, n = 16, 6, 4
    sizes = [3, 5, 2]
    batches = [
        (torch.randn(s, b, h, n, generator=g) * 2 + 1, torch.randn(b, h, n, generator=g))
        for b in sizes
    ]
    acc = M.ProbMetricAccumulator(max_chunk_elems=500)  # forces chunking inside batches
    for xs, y in batches:
        acc.update_samples(xs, y)
    res = acc.compute()

    xs = torch.cat([b[0] for b in batches], dim=1)
    y = torch.cat([b[1] for b in batches], dim=0)
    one = M.ProbMetricAccumulator()
    one.update_samples(xs, y)
    _assert_results_close(res, one.compute())

    # one-shot values from the pure functions
    x64, y64 = xs.double(), y.double()
    mean = x64.mean(0)
    crps = M.crps_ensemble(xs, y)
    expected = {
        "mse": float(((mean - y64) ** 2).mean()),
        "mae": float((mean - y64).abs().mean()),
        "crps": float(crps.mean()),
        "crps_fair": float(M.crps_ensemble(xs, y, fair=True).mean()),
        "crps_norm": M.crps_quantile_normalized(xs, y),
        "crps_sum": M.crps_sum_normalized(xs, y),
        "coverage_50": M.interval_coverage(xs, y, 0.5),
        "coverage_90": M.interval_coverage(xs, y, 0.9),
        "sharpness_90": M.interval_width(xs, 0.9),
        "pred_std": float(x64.std(0, unbiased=False).mean()),
        "energy_score": float(M.energy_score(xs, y).mean()),
        "variogram_score": float(M.variogram_score(xs, y).mean()),
    }
    expected["rmse"] = math.sqrt(expected["mse"])
    for k, v in expected.items():
        assert res[k] == pytest.approx(v, rel=1e-10), k
    np.testing.assert_allclose(res["crps_per_step"], crps.mean((0, 2)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(res["crps_per_variate"], crps.mean((0, 1)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(
        res["mse_per_variate"], ((mean - y64) ** 2).mean((0, 1)).numpy(), rtol=1e-10
    )
    assert res["reliability"]["coverage"] == pytest.approx(M.reliability_curve(xs, y)[1])
    assert len(res["crps_per_step"]) == h and len(res["crps_per_variate"]) == n
    assert res["n_windows"] == sum(sizes)
    for k, v in M.window_scores(xs, y).items():
        np.testing.assert_allclose(acc.per_window()[k], v.numpy(), rtol=1e-10, err_msg=k)


def test_accumulator_joint_scores_merge_in_batch_order():
    """Per-batch states merged in batch order give the one-accumulator sums bit for bit and
    the per-window scores in window order; the variogram axis and order are configurable."""
    g = torch.Generator().manual_seed(3)
    s, h, n = 8, 5, 3
    batches = [
        (torch.randn(s, b, h, n, generator=g), torch.randn(b, h, n, generator=g)) for b in (4, 2)
    ]
    kw = {"variogram_p": 1.0, "variogram_over": "variates"}
    one = M.ProbMetricAccumulator(**kw)
    states = []
    for xs, y in batches:
        one.update_samples(xs, y)
        part = M.ProbMetricAccumulator(**kw)
        part.update_samples(xs, y)
        states.append(part.state())
    merged = M.ProbMetricAccumulator(**kw)
    for st in states:
        merged.merge(st)
    a, b = merged.compute(), one.compute()
    assert a["energy_score"] == b["energy_score"]
    assert a["variogram_score"] == b["variogram_score"]
    xs = torch.cat([x for x, _ in batches], 1)
    y = torch.cat([t for _, t in batches])
    ws = M.window_scores(xs, y, p=1.0, over="variates")
    for k in M.WINDOW_KEYS:
        assert merged.per_window()[k].shape == (6,)
        np.testing.assert_array_equal(merged.per_window()[k], one.per_window()[k])
        np.testing.assert_allclose(merged.per_window()[k], ws[k].numpy(), rtol=1e-12)
    assert a["variogram_score"] == pytest.approx(float(ws["variogram_score"].mean()), rel=1e-12)
    # disabled: NaN, and nothing else changes
    off = M.ProbMetricAccumulator(joint_scores=False)
    off.update_samples(xs, y)
    res = off.compute()
    assert math.isnan(res["energy_score"]) and math.isnan(res["variogram_score"])
    assert res["crps"] == pytest.approx(b["crps"], rel=1e-12)
    with pytest.raises(ValueError):
        M.ProbMetricAccumulator(variogram_over="steps")


def test_accumulator_gaussian_streams_exactly():
    g = torch.Generator().manual_seed(4)
    h, n = 5, 3
    sigma = torch.rand(h, n, generator=g) + 0.1  # broadcast (H, N)
    batches = []
    for b in (4, 1, 6):
        mu = torch.randn(b, h, n, generator=g)
        batches.append((mu, mu + sigma * torch.randn(b, h, n, generator=g)))
    acc = M.ProbMetricAccumulator()
    for mu, y in batches:
        acc.update_gaussian(mu, sigma, y)
    res = acc.compute()

    mu = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    crps = M.crps_gaussian(mu, sigma, y)
    expected = {
        "mse": float(((mu.double() - y.double()) ** 2).mean()),
        "crps": float(crps.mean()),
        "crps_fair": float(crps.mean()),
        "crps_norm": M.gaussian_crps_quantile_normalized(mu, sigma, y),
        "crps_sum": M.gaussian_crps_sum_normalized(mu, sigma, y),
        "coverage_50": M.gaussian_interval_coverage(mu, sigma, y, 0.5),
        "coverage_90": M.gaussian_interval_coverage(mu, sigma, y, 0.9),
        "sharpness_90": M.gaussian_interval_width(sigma, 0.9),
        "pred_std": float(sigma.double().mean()),
    }
    for k, v in expected.items():
        assert res[k] == pytest.approx(v, rel=1e-10), k
    assert res["reliability"]["coverage"] == pytest.approx(
        M.gaussian_reliability_curve(mu, sigma, y)[1]
    )
    # joint scores of a Gaussian with sigma > 0 have no closed form here: NaN, per window too
    assert math.isnan(res["energy_score"]) and math.isnan(res["variogram_score"])
    assert np.isnan(acc.per_window()["energy_score"]).all()
    np.testing.assert_allclose(acc.per_window()["crps"], crps.mean((1, 2)).numpy(), rtol=1e-12)


def test_accumulator_point_mass():
    g = torch.Generator().manual_seed(8)
    mu = torch.randn(7, 4, 3, generator=g)
    y = torch.randn(7, 4, 3, generator=g)
    acc = M.ProbMetricAccumulator()
    acc.update_gaussian(mu, torch.zeros(()), y)
    res = acc.compute()
    assert all(np.isfinite(res[k]) for k in SCALAR_KEYS)
    assert res["crps"] == pytest.approx(res["mae"], rel=1e-12)
    assert res["crps_fair"] == pytest.approx(res["mae"], rel=1e-12)
    assert res["coverage_50"] == 0.0 and res["coverage_90"] == 0.0
    assert res["sharpness_90"] == 0.0 and res["pred_std"] == 0.0
    # a degenerate ensemble (all samples equal) is the same point mass
    acc2 = M.ProbMetricAccumulator()
    acc2.update_samples(mu.unsqueeze(0).expand(5, -1, -1, -1), y)
    _assert_results_close(acc2.compute(), res, rtol=1e-9)
    err = (mu.double() - y.double()).flatten(1)
    assert res["energy_score"] == pytest.approx(float(err.norm(dim=1).mean()), rel=1e-12)
    # only the windows whose sigma is 0 everywhere are point masses
    sigma = torch.zeros(7, 4, 3)
    sigma[2, 1, 0] = 0.5
    acc3 = M.ProbMetricAccumulator()
    acc3.update_gaussian(mu, sigma, y)
    es = acc3.per_window()["energy_score"]
    assert np.isnan(es[2]) and np.isfinite(np.delete(es, 2)).all()
    np.testing.assert_allclose(np.delete(es, 2), np.delete(err.norm(dim=1).numpy(), 2))


def test_accumulator_errors():
    acc = M.ProbMetricAccumulator()
    with pytest.raises(ValueError):
        acc.compute()
    with pytest.raises(ValueError):
        acc.update_samples(torch.zeros(3, 2, 4, 5), torch.zeros(2, 4, 6))
    acc.update_samples(torch.zeros(3, 2, 4, 5), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError):
        acc.update_samples(torch.zeros(3, 2, 4, 6), torch.zeros(2, 4, 6))
    with pytest.raises(ValueError):
        M.ProbMetricAccumulator().update_gaussian(
            torch.zeros(2, 4, 5), -torch.ones(4, 5), torch.zeros(2, 4, 5)
        )


def test_ratio_units_score_crps_norm_and_sum_in_the_mapped_units():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 4, 5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    mu, sigma = y + 0.3, torch.rand(5, 3, generator=g, dtype=torch.float64)
    scale, shift = torch.tensor([2.0, 0.5, 3.0]), torch.tensor([1.0, -4.0, 10.0])
    mapped = M.ProbMetricAccumulator()
    mapped.update_samples(x * scale + shift, y * scale + shift)
    mapped_g = M.ProbMetricAccumulator()
    mapped_g.update_gaussian(mu * scale + shift, sigma * scale, y * scale + shift)
    acc = M.ProbMetricAccumulator(ratio_units=(scale, shift))
    acc.update_samples(x, y)
    acc_g = M.ProbMetricAccumulator(ratio_units=(scale, shift))
    acc_g.update_gaussian(mu, sigma, y)
    plain = M.ProbMetricAccumulator()
    plain.update_samples(x, y)
    for got, want in ((acc, mapped), (acc_g, mapped_g)):
        for key in ("crps_norm", "crps_sum"):
            assert got.compute()[key] == pytest.approx(want.compute()[key], rel=1e-12)
    assert acc.compute()["crps"] == pytest.approx(plain.compute()["crps"], rel=1e-15)
    assert acc.compute()["crps_norm"] != pytest.approx(plain.compute()["crps_norm"], rel=1e-3)
    with pytest.raises(ValueError, match="positive"):
        M.ProbMetricAccumulator(ratio_units=(-scale, shift))
