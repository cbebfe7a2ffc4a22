"""Probabilistic baselines built from a point forecast, fitted on validation windows only.

A statistician's answer to "how much does a generative model add over its own point
forecast?": wrap the point forecast in a noise model fitted to its validation residuals,
then draw ensembles of the same size S as the model's, so every method is scored by the
same ensemble code (CRPS, energy and variogram scores) at the same sample count.

Shapes: lookback ``x`` (B, L, N); point forecast, truth and residuals (B, H, N); scales
(B, 1, N); ensembles (S, B, H, N). Everything is computed in float64.

Recipe (validation data only, then applied to test windows)::

    floor = fit_scale_floor(window_scale(x_val, 0.0))            # (N,)
    s_val = window_scale(x_val, floor)                            # (B, 1, N)
    res = y_val - point_val                                       # (B, H, N)
    c = fit_scaled_gaussian(res, s_val)                           # (H, N)
    table = fit_residual_quantiles(res, s_val)                    # QuantileTable
    s = window_scale(x_test, floor)
    gauss = sample_gaussian(point_test, c * s, S, generator)      # (S, B, H, N)
    empir = sample_residual_quantiles(point_test, s, table, S, generator)
    mass = sample_point(point_test)                               # (1, B, H, N): CRPS = MAE

Residuals are divided by the lookback window's own scale (the instance scale the
iTransformer normalises with), so one fitted shape serves windows of any level of activity.
Members are drawn independently per (window, step, variate): these baselines have the right
marginals by construction but no temporal or cross-variate dependence, which is exactly what
the energy and variogram scores then measure against a joint generative model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from utils.metrics import quantiles_from_sorted

#: Variance added inside the square root, as ``models.iTransformer.Normalizer`` does.
NORMALIZER_EPS = 1e-5


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _check_res(residuals, scales) -> tuple[torch.Tensor, torch.Tensor]:
    res, sc = _f64(residuals), _f64(scales)
    if res.dim() != 3 or sc.dim() != 3 or sc.shape[1] != 1:
        raise ValueError("residuals must be (B, H, N) and scales (B, 1, N)")
    if sc.shape[0] != res.shape[0] or sc.shape[2] != res.shape[2]:
        raise ValueError(f"scales {tuple(sc.shape)} do not match residuals {tuple(res.shape)}")
    if bool((sc <= 0).any()):
        raise ValueError("scales must be positive")
    return res, sc.to(res.device)


def window_scale(x_lookback: torch.Tensor, floor=0.0) -> torch.Tensor:
    """Instance scale of each lookback window, floored: (B, L, N) -> (B, 1, N) float64.

    ``sqrt(var + 1e-5)`` with the population variance (``unbiased=False``) over the L steps,
    exactly ``models.iTransformer.Normalizer.stdev``; then ``max(scale, floor)`` with
    ``floor`` a scalar or anything broadcastable to (B, 1, N), e.g. (N,) from
    :func:`fit_scale_floor`.
    """
    x = _f64(x_lookback)
    if x.dim() != 3:
        raise ValueError("x_lookback must be (B, L, N)")
    centered = x - x.mean(1, keepdim=True)
    scale = torch.sqrt(torch.var(centered, dim=1, keepdim=True, unbiased=False) + NORMALIZER_EPS)
    return torch.maximum(scale, _f64(floor).to(scale.device))


def fit_scale_floor(val_scales: torch.Tensor, q: float = 0.01) -> torch.Tensor:
    """Per-variate floor for the window scale: the ``q`` quantile of the validation scales.

    val_scales: (B, 1, N) unfloored validation scales (``window_scale(x_val, 0.0)``).
    Returns (N,) float64. Flat lookbacks (a stuck sensor, a night of zeros) have a scale near
    ``sqrt(1e-5)``, which would collapse the predictive spread of a window whose future need
    not be flat; flooring at a low quantile of the validation scales leaves all but a
    fraction ``q`` of validation windows untouched and lifts the degenerate ones to a typical
    small scale of that variate. Quantiles use linear interpolation (as ``numpy.quantile``).
    """
    sc = _f64(val_scales)
    if sc.dim() != 3 or sc.shape[1] != 1:
        raise ValueError("val_scales must be (B, 1, N)")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    return quantiles_from_sorted(torch.sort(sc[:, 0], dim=0).values, [q])[0]


def fit_scaled_gaussian(residuals: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Multiplier c (H, N) of the Gaussian baseline ``y ~ N(point, (c[h, n] * scale)^2)``.

    residuals: (B, H, N) validation ``y - point``; scales: (B, 1, N).
    ``c[h, n] = sqrt(mean_b (res / scale)^2)``: the maximum-likelihood sigma of a zero-mean
    Gaussian for the normalised residuals ``res / scale`` (zero mean: the point forecast is
    taken as the predictive mean, no bias correction), i.e. their root mean square.
    """
    res, sc = _check_res(residuals, scales)
    return (res / sc).square().mean(0).sqrt()


class QuantileTable(NamedTuple):
    """Empirical quantile function of normalised residuals.

    levels: (K,) ascending in [0, 1]; values: (K, H, N) quantiles at those levels.
    """

    levels: torch.Tensor
    values: torch.Tensor


def fit_residual_quantiles(
    residuals: torch.Tensor, scales: torch.Tensor, n_levels: int = 101
) -> QuantileTable:
    """Empirical quantiles per (h, n) of the normalised residuals ``res / scale``.

    residuals: (B, H, N) validation ``y - point``; scales: (B, 1, N).  The table holds the
    linear-interpolation quantiles (as ``numpy.quantile``) at the ``n_levels`` equally spaced
    levels ``k / (n_levels - 1)``, k = 0..n_levels-1 -- 0, 0.01, ..., 1 by default. Levels 0
    and 1 are the validation minimum and maximum, so the fitted distribution, the table's
    quantile function interpolated linearly in the level, is continuous and piecewise
    uniform between them: sampling never extrapolates. (Split-conformal style: the scaled
    residual's distribution is assumed the same on test windows.)
    """
    res, sc = _check_res(residuals, scales)
    if n_levels < 2:
        raise ValueError("n_levels must be at least 2 (levels 0 and 1)")
    levels = torch.linspace(0.0, 1.0, int(n_levels), dtype=torch.float64)
    z = torch.sort(res / sc, dim=0).values
    return QuantileTable(levels, quantiles_from_sorted(z, levels))


def _stratified(levels_to_values, shape, s: int, generator, device) -> torch.Tensor:
    """(S, *shape) draws: each point gets the values at the S midpoint levels ``(i + 0.5) / S``
    in its own random order (a random permutation per point, from sorting i.i.d. keys).

    ``levels_to_values`` maps the levels (S,) float64 to values (S, ...) broadcastable to
    (S, *shape); it is evaluated once, and each point picks its values by its permutation.
    """
    if s < 1:
        raise ValueError("S must be at least 1")
    levels = (torch.arange(s, dtype=torch.float64, device=device) + 0.5) / s
    values = levels_to_values(levels)
    values = values.reshape(s, *[1] * (len(shape) + 1 - values.dim()), *values.shape[1:])
    keys = torch.rand((*shape, s), generator=generator, dtype=torch.float64, device=device)
    order = torch.argsort(keys, dim=-1).movedim(-1, 0)  # one point's S keys contiguous: fast
    return torch.gather(values.expand(s, *shape), 0, order)


def sample_gaussian(
    point: torch.Tensor,
    sigma: torch.Tensor,
    S: int,
    generator: torch.Generator | None = None,
    stratified: bool = False,
) -> torch.Tensor:
    """Ensemble of ``point + sigma * Z``, Z independent N(0, 1) per member and point.

    point: (B, H, N); sigma: (H, N) or (B, H, N) (anything broadcastable; for the scaled
    Gaussian ``c * scale``).  Returns (S, B, H, N) float64. ``stratified=True`` draws Z as
    ``Phi^{-1}`` of a random permutation of the levels ``(i + 0.5) / S`` per point instead.
    """
    mu = _f64(point)
    sig = torch.broadcast_to(_f64(sigma).to(mu.device), mu.shape)
    if bool((sig < 0).any()):
        raise ValueError("sigma must be non-negative")
    if stratified:
        z = _stratified(torch.special.ndtri, mu.shape, S, generator, mu.device)
    else:
        z = torch.randn((S, *mu.shape), generator=generator, dtype=torch.float64, device=mu.device)
    return mu + sig * z


def quantile_table_lookup(table: QuantileTable, u: torch.Tensor) -> torch.Tensor:
    """The table's quantile function at levels u (S, B, H, N) -> (S, B, H, N), interpolated
    linearly in the level for each (h, n); levels outside the table are clamped to its ends."""
    levels = _f64(table.levels).to(u.device)
    values = _f64(table.values).to(u.device)  # (K, H, N)
    k, h, n = values.shape
    if u.shape[-2:] != (h, n):
        raise ValueError(f"levels {tuple(u.shape)} do not end with the table's (H, N) {(h, n)}")
    u = u.clamp(float(levels[0]), float(levels[-1]))
    hi = torch.searchsorted(levels, u.contiguous()).clamp(1, k - 1)
    lo = hi - 1
    w = (u - levels[lo]) / (levels[hi] - levels[lo])
    flat = values.permute(1, 2, 0).reshape(-1)  # (H * N * K): per (h, n) its K values
    base = (torch.arange(h * n, device=u.device) * k).reshape(h, n)
    v_lo = flat[base + lo]
    v_hi = flat[base + hi]
    return v_lo + w * (v_hi - v_lo)


def sample_residual_quantiles(
    point: torch.Tensor,
    scales: torch.Tensor,
    table: QuantileTable,
    S: int,
    generator: torch.Generator | None = None,
    stratified: bool = True,
) -> torch.Tensor:
    """Ensemble ``point + scale * Q_{h,n}(U)`` from the empirical residual quantile table.

    point: (B, H, N); scales: (B, 1, N) (test windows' ``window_scale``); table from
    :func:`fit_residual_quantiles`.  Returns (S, B, H, N) float64. U is, per point, a random
    permutation of the S stratified levels ``(i + 0.5) / S`` (default: every point's
    ensemble spans its fitted distribution evenly, members independent across points), or
    i.i.d. U(0, 1) with ``stratified=False``.
    """
    mu = _f64(point)
    sc = _f64(scales).to(mu.device)
    if mu.dim() != 3 or sc.dim() != 3 or sc.shape[1] != 1:
        raise ValueError("point must be (B, H, N) and scales (B, 1, N)")
    if stratified:
        h, n = mu.shape[1:]

        def lookup(levels: torch.Tensor) -> torch.Tensor:  # (S,) -> (S, H, N)
            return quantile_table_lookup(table, levels.view(-1, 1, 1).expand(-1, h, n))

        z = _stratified(lookup, mu.shape, S, generator, mu.device)
    else:
        u = torch.rand((S, *mu.shape), generator=generator, dtype=torch.float64, device=mu.device)
        z = quantile_table_lookup(table, u)
    return mu + sc * z


def sample_point(point: torch.Tensor, S: int = 1) -> torch.Tensor:
    """The point forecast as a point-mass ensemble (S, B, H, N) (a view; S = 1 suffices:
    its CRPS is the MAE and its energy score the Euclidean error)."""
    return _f64(point).unsqueeze(0).expand(S, *point.shape)
