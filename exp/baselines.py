"""The baselines that every evaluation scores beside the model, all built from the stage-1
backbone's point forecast and fitted on validation windows only:

* ``itransformer``: the point forecast as a point mass (its CRPS is its MAE);
* ``itransformer_gaussian``: point + Gaussian noise, σ per (horizon step, variate) = the
  validation RMSE.

Each baseline is scored as an ensemble of the model's sample count, drawn independently per
point, so that every method goes through the same scoring code.
"""

from __future__ import annotations

import torch
from torch import Tensor

NAMES = ("itransformer", "itransformer_gaussian")


def fit(residuals: Tensor, scales: Tensor) -> dict[str, Tensor]:
    """residuals (W, H, N) = truth − point forecast and the lookback scales (W, 1, N) of W
    validation windows → the baselines' parameters."""
    residuals = residuals.double()
    return {"sigma": residuals.square().mean(0).sqrt().float()}  # (H, N)


def ensembles(
    params: dict[str, Tensor], point: Tensor, scale: Tensor, n_samples: int, first: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:  # fmt: skip
    """Every baseline's ensemble for a batch: point (B, H, N') forecast, scale (B, 1, N') the
    lookback's instance σ, ``first`` the first scored variate (−1 for MS, else 0)
    → {name: (S, B, H, N')}."""
    point = point.float()
    sigma = params["sigma"][:, first:].to(point.device)  # (H, N')
    noise = torch.randn((n_samples, *point.shape), generator=generator, device=point.device)
    return {
        "itransformer": point[None],
        "itransformer_gaussian": point + sigma * noise,
    }
