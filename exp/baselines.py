"""The baselines that every evaluation scores beside the model. All are built from the stage-1
backbone's point forecast and fitted on validation windows only (``utils/baselines.py`` has the
statistics):

* ``itransformer``: the point forecast as a point mass (its CRPS is its MAE);
* ``itransformer_gaussian``: point + Gaussian noise, σ per (horizon step, variate) = the
  validation RMSE;
* ``scaled_gaussian``: point + Gaussian noise, σ = c[h, n] × the window's lookback σ;
* ``residual_quantiles``: point + the window's lookback σ × the empirical quantiles of the
  validation residuals divided by their windows' lookback σ (split-conformal style).

The lookback σ is floored per variate at a quantile of the validation windows' lookback σ (the
one of ``FLOOR_QUANTILES`` whose scaled Gaussian has the lowest validation CRPS): a window whose
lookback is flat in a variate would otherwise get a near-zero spread, and its residual would
inflate c for all the others. The candidates run up to the maximum (quantile 1): a variate
whose lookback is flat in most windows (rain, a sensor that is mostly off) needs a floor above
its median, and at the maximum nearly every window gets the same σ (the unscaled Gaussian). Each
baseline is scored as an ensemble of the model's sample count, drawn per point from stratified
levels in random order (every point's ensemble spans its distribution evenly; points are
independent), so every method goes through the same scoring code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from utils import baselines as stats
from utils.metrics import crps_ensemble, crps_gaussian

NAMES = ("itransformer", "itransformer_gaussian", "scaled_gaussian", "residual_quantiles")
FLOOR_QUANTILES = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


def fit_scale_floor(residuals: Tensor, scales: Tensor) -> Tensor:
    """Per variate, the floor of the lookback σ among the validation quantiles
    ``FLOOR_QUANTILES`` that minimises the scaled Gaussian's validation CRPS → (N,)."""
    best_crps, best_floor = None, None
    for q in FLOOR_QUANTILES:
        floor = stats.fit_scale_floor(scales, q)  # (N,)
        floored = scales.double().clamp_min(floor)
        sigma = stats.fit_scaled_gaussian(residuals, floored) * floored  # (W, H, N)
        crps = crps_gaussian(torch.zeros_like(sigma), sigma, residuals).mean((0, 1))  # (N,)
        if best_crps is None:
            best_crps, best_floor = crps, floor
        else:
            better = crps < best_crps
            best_crps = torch.where(better, crps, best_crps)
            best_floor = torch.where(better, floor, best_floor)
    return best_floor


def fit(residuals: Tensor, scales: Tensor) -> dict[str, Tensor]:
    """residuals (W, H, N) = truth − point forecast and the lookback σ (W, 1, N) of W
    validation windows → every baseline's parameters (plain tensors: they go into the
    checkpoint)."""
    floor = fit_scale_floor(residuals, scales)  # (N,)
    floored = scales.double().clamp_min(floor)
    table = stats.fit_residual_quantiles(residuals, floored)
    params = {
        "sigma": residuals.double().square().mean(0).sqrt(),  # (H, N)
        "scale_floor": floor,  # (N,)
        "c": stats.fit_scaled_gaussian(residuals, floored),  # (H, N)
        "levels": table.levels,  # (K,)
        "quantiles": table.values,  # (K, H, N)
    }
    params["val_crps"] = validation_crps(params, residuals, scales)
    return params


def validation_crps(
    params: dict[str, Tensor], residuals: Tensor, scales: Tensor, n_samples: int = 50,
    windows: int = 512,
) -> Tensor:  # fmt: skip
    """Each baseline's ensemble CRPS (``NAMES`` order) on up to ``windows`` evenly spaced
    validation windows, the data they were fitted on: what picks "the best baseline" without
    looking at test data."""
    picks = torch.linspace(0, len(residuals) - 1, min(windows, len(residuals))).round().long()
    generator = torch.Generator().manual_seed(0)
    total = torch.zeros(len(NAMES), dtype=torch.float64)
    for part in picks.split(32):  # a few windows at a time: memory stays flat on wide data
        res, scale = residuals[part].double(), scales[part].double()
        drawn = ensembles(params, torch.zeros_like(res), scale, n_samples, 0, generator)
        total += torch.stack([crps_ensemble(s, res).sum() for s, _ in drawn.values()])
    return total / (len(picks) * residuals[0].numel())


def ensembles(
    params: dict[str, Tensor], point: Tensor, scale: Tensor, n_samples: int, first: int,
    generator: torch.Generator,
) -> dict[str, tuple[Tensor, Tensor]]:  # fmt: skip
    """Every baseline's ensemble for a batch → {name: (samples (S, B, H, N'), point)}.

    point (B, H, N') forecast of the scored variates, scale (B, 1, N') their lookback σ,
    ``first`` the first scored variate (−1 for MS, else 0).
    """
    p = {k: params[k][..., first:].to(point.device) for k in ("sigma", "scale_floor", "c",
                                                              "quantiles")}  # fmt: skip
    scale = scale.double().clamp_min(p["scale_floor"])
    table = stats.QuantileTable(params["levels"].to(point.device), p["quantiles"])

    def gaussian(sigma: Tensor) -> Tensor:
        return stats.sample_gaussian(point, sigma, n_samples, generator, stratified=True)

    return {
        "itransformer": (point[None], point),
        "itransformer_gaussian": (gaussian(p["sigma"]), point),
        "scaled_gaussian": (gaussian(p["c"] * scale), point),
        "residual_quantiles": (
            stats.sample_residual_quantiles(point, scale, table, n_samples, generator),
            point,
        ),
    }
