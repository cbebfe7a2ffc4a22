"""Spread calibration: one factor per variate (or one for all) that rescales the samples around
their mean so that the ensemble CRPS on validation windows is smallest.

It is the diffusion model's counterpart of the Gaussian baseline's σ, which also comes from
validation residuals. The factors depend on the sampler, its steps and the sample count, so they
are fitted once per such setting (``calibration_key``) and kept in the checkpoint.
"""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import torch
from torch import Tensor

# 0.135 … 7.39 2.5% apart, then on to 54.6 10% apart (collapsed ensembles need it)
SCALES = np.exp(np.concatenate([np.arange(-80, 81) * 0.025, 2 + np.arange(1, 21) * 0.1]))
UNIT = 80  # SCALES[UNIT] == 1


def calibration_key(args: Namespace) -> str:
    """The sampling setting that a spread factor belongs to (with ``--bounds``, the bounds too:
    the factors are fitted on bounded samples)."""
    key = (
        f"{args.calibrate_spread}|{args.sampler}|{args.sampling_steps}|{args.timestep_spacing}|"
        f"eta={args.eta}|S={args.n_samples}|center={args.center_samples}|"
        f"windows={args.calib_windows}|amp={args.use_amp}"
    )
    bounds = getattr(args, "bounds", None)
    if bounds:
        key += "|bounds=" + ",".join("" if b is None else f"{b:g}" for b in bounds)
    return key


def crps_by_spread_scale(
    samples: Tensor, true: Tensor, scales=SCALES, low: Tensor | None = None,
    high: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Σ over (window, step) of the ensemble CRPS of mean + s·(samples − mean), for every s in
    ``scales`` and every variate → float64 (len(scales), N). samples (S, B, H, N), true (B, H, N).

    With d the sorted deviations from the mean, CRPS(s) = E|mean + s·d − y| − s·½E|d − d'|,
    and ½E|d − d'| = Σᵢ (2i − S − 1)·d₍ᵢ₎ / S²; a few windows at a time keep memory flat.
    ``low``/``high`` (N,): the CRPS of the rescaled samples clipped into [low, high], as the
    bounded samples will be scored; clipping keeps their order, so the same sum applies to the
    clipped values, one scale at a time.
    """
    S, N = samples.shape[0], samples.shape[-1]
    weights = ((2 * torch.arange(1, S + 1) - S - 1).float() / S**2).view(-1, 1, 1, 1)
    term1 = torch.zeros(len(scales), N, dtype=torch.float64)
    spread = torch.zeros(N, dtype=torch.float64)
    bounded = low is not None or high is not None
    spreads = torch.zeros(len(scales), N, dtype=torch.float64)  # bounded: per scale
    for part in range(0, len(true), 4):
        x, y = samples[:, part : part + 4], true[part : part + 4]
        mean = x.mean(0)
        dev = (x - mean).sort(dim=0).values  # (S, b, H, N)
        if not bounded:
            spread += (weights * dev).sum((0, 1, 2)).double()
        offset = mean - y  # (b, H, N)
        buffer = torch.empty_like(dev)  # one buffer for all scales: wide data stays flat
        for k, scale in enumerate(list(scales)):
            if bounded:
                torch.mul(dev, float(scale), out=buffer).add_(mean).clamp_(low, high)
                spreads[k] += (weights * buffer).sum((0, 1, 2)).double()
                buffer.sub_(y).abs_()
            else:
                torch.mul(dev, float(scale), out=buffer).add_(offset).abs_()
            term1[k] += buffer.mean(0).sum((0, 1)).double()
    if bounded:
        return term1 - spreads
    return term1 - torch.as_tensor(scales, dtype=torch.float64)[:, None] * spread


def clip_samples(samples: Tensor, low: Tensor | None, high: Tensor | None) -> Tensor:
    """samples clipped into [low, high] per variate (the last axis), in place; either bound
    (N,) may be None."""
    if low is None and high is None:
        return samples
    to = {"device": samples.device, "dtype": samples.dtype}
    low = None if low is None else low.to(**to)
    high = None if high is None else high.to(**to)
    with torch.inference_mode():  # the sampler's output may be an inference tensor
        return samples.clamp_(low, high)


def best_scale(total: Tensor, mode: str, scales=SCALES) -> tuple[Tensor, Tensor]:
    """total (len(scales), N) CRPS sums → (factor per variate (N,) float32, chosen indices);
    ``mode`` "global" picks one factor for all variates, "variate" one each."""
    choice = total.sum(1, keepdim=True).expand_as(total) if mode == "global" else total
    best = choice.argmin(0)  # (N,)
    return torch.as_tensor(scales, dtype=torch.float32)[best], best


def apply_spread(samples: Tensor, scale: Tensor) -> Tensor:
    """mean + scale·(samples − mean) over the sample axis, in place; samples (S, B, H, N),
    scale (N,)."""
    with torch.inference_mode():
        mean = samples.mean(0)
        samples.sub_(mean).mul_(scale.to(samples.device)).add_(mean)
    return samples
