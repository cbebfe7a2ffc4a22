"""Noise schedules and the forward process q(x_t | x_0).

Conventions used throughout ``diffusion/``:

* a timestep index ``t`` lies in ``[0, T-1]``;
* ``alpha_bar`` is a 1-D float64 CPU tensor of length ``T`` with
  ``alpha_bar[t] = ᾱ_t = prod_{s<=t} (1 - β_s)`` (Ho et al. 2020, eq. 4);
* state tensors may have any shape (the models use ``(B, N, H)``); everything broadcasts.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")
SPACINGS = ("trailing", "linspace", "leading", "linear")

_COSINE_S = 0.008
_MAX_BETA = 0.999


def _linear_betas(T: int) -> Tensor:
    """DDPM linear β from 1e-4 to 0.02, rescaled by 1000/T (improved-diffusion convention)."""
    scale = 1000.0 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def _cosine_alpha_bar_fn(u: Tensor) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17 (unnormalised): f(u) = cos²((u + s)/(1 + s) · π/2)."""
    return torch.cos((u + _COSINE_S) / (1.0 + _COSINE_S) * math.pi / 2) ** 2


def _cosine_betas(T: int) -> Tensor:
    """Nichol & Dhariwal 2021: β_t = min(1 - f((t+1)/T) / f(t/T), 0.999)."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = _cosine_alpha_bar_fn(u)
    return torch.clamp(1.0 - f[1:] / f[:-1], max=_MAX_BETA)


def make_alpha_bar(schedule: str, T: int) -> Tensor:
    """Return ᾱ_t = cumprod(1 - β) for a named schedule.

    Args:
        schedule: one of ``SCHEDULES``.
        T: number of diffusion steps (>= 1).

    Returns:
        A fresh float64 CPU tensor of shape ``(T,)``, strictly decreasing, in (0, 1).
    """
    if T < 1:
        raise ValueError(f"T must be a positive integer, got {T}.")
    if schedule == "linear":
        beta = _linear_betas(T)
    elif schedule == "cosine":
        beta = _cosine_betas(T)
    else:
        raise ValueError(f"Unknown noise schedule {schedule!r}; choose one of {SCHEDULES}.")
    return torch.cumprod(1.0 - beta, dim=0)


def betas(alpha_bar: Tensor) -> Tensor:
    """β_t = 1 - ᾱ_t / ᾱ_{t-1} (with ᾱ_{-1} = 1). Shape ``(T,)``."""
    return 1.0 - alpha_bar / alpha_bar_prev(alpha_bar)


def alpha_bar_prev(alpha_bar: Tensor) -> Tensor:
    """ᾱ_{t-1} with ᾱ_{-1} = 1. Shape ``(T,)``."""
    return torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])


def posterior_variance(alpha_bar: Tensor) -> Tensor:
    """β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t (Ho et al. 2020, eq. 7). Shape ``(T,)``; β̃_0 = 0."""
    return (1.0 - alpha_bar_prev(alpha_bar)) / (1.0 - alpha_bar) * betas(alpha_bar)


def log_snr(alpha_bar: Tensor) -> Tensor:
    """λ_t = log(ᾱ_t / (1 - ᾱ_t)), the log signal-to-noise ratio. Shape ``(T,)``."""
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def alpha_bar_at(alpha_bar: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Gather ᾱ_t per batch element, shaped to broadcast against ``like``.

    Args:
        alpha_bar: ``(T,)`` schedule.
        t: ``(B,)`` integer timesteps indexing the first dim of ``like``.
        like: ``(B, ...)`` tensor whose dtype/device the result takes.

    Returns:
        ``(B, 1, ..., 1)`` tensor with ``like.dim()`` dims.
    """
    a = alpha_bar.to(device=like.device)[t.to(like.device)].to(like.dtype)
    return a.reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(x0: Tensor, t: Tensor, alpha_bar: Tensor, noise: Tensor) -> Tensor:
    """Sample the forward process, x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε (Ho et al. 2020, eq. 4).

    Args:
        x0: ``(B, ...)`` clean data.
        t: ``(B,)`` LongTensor of timesteps in ``[0, T-1]``.
        alpha_bar: ``(T,)`` schedule (cast to ``x0``'s dtype/device here).
        noise: tensor shaped like ``x0``, standard normal.

    Returns:
        ``x_t`` with the shape of ``x0``.
    """
    a = alpha_bar_at(alpha_bar, t, x0)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def timesteps(T: int, steps: int, spacing: str) -> list[int]:
    """Descending list of ``steps`` distinct timesteps in ``[0, T-1]`` to visit when sampling.

    The names and formulas are those of diffusers (0.42) and Lin et al. 2023, Table 2; after the
    last visited timestep a sampler jumps to ᾱ = 1 (diffusers: ``set_alpha_to_one=True``,
    ``final_sigmas_type="zero"``).

    * ``"trailing"``: ``round(arange(T, 0, -T/steps)) - 1`` (about ``T - i·T/steps - 1`` for
      ``i = 0..steps-1``); starts at ``T-1`` and ends at ``round(T/steps) - 1``.
    * ``"linspace"``: ``round(linspace(0, T-1, steps+1))[::-1][:-1]``, the default grid of
      diffusers' DPMSolverMultistepScheduler: ``steps+1`` points from ``T-1`` to 0 without the
      last one, so it ends at ``round((T-1)/steps)``; needs ``steps <= T-1``.
    * ``"leading"``: the DDIM paper's ``τ_i = (i-1)·c`` with ``c = T // steps``, i.e.
      ``arange(0, steps)·(T//steps)`` reversed, as diffusers' DDIMScheduler and DDPMScheduler
      with ``steps_offset=0``; ends at 0 but starts at ``(steps-1)·(T//steps)``, below ``T-1``
      unless ``steps == T`` (``[0]`` for ``steps == 1``). (DPMSolverMultistepScheduler's
      "leading" differs: it spaces ``steps+1`` points by ``T//(steps+1)``.)
    * ``"linear"``: ``round(linspace(T-1, 0, steps))``, both ends included; ``[T-1]`` for
      ``steps == 1``. Close to DDIMScheduler's "linspace", ``round(linspace(0, T-1, steps))``
      reversed, which rounds ties the other way and gives ``[0]`` for ``steps == 1``.

    ``steps == T`` gives every timestep ``T-1, ..., 0`` for all spacings but ``"linspace"``.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {SPACINGS}.")
    most = T - 1 if spacing == "linspace" else T
    if isinstance(steps, bool) or not isinstance(steps, Integral) or not 1 <= steps <= most:
        raise ValueError(
            f"steps must be an integer from 1 to {most} for T={T} and {spacing!r} spacing, "
            f"got {steps!r}."
        )
    steps = int(steps)
    if spacing == "trailing":
        # diffusers' float arange, whose values round differently from T - i·T/steps at ties
        # (e.g. T=1000, steps=48); it can hold one point too many (~1e-13, e.g. T=15, steps=13)
        grid = np.round(np.arange(T, 0, -T / steps)[:steps]) - 1
    elif spacing == "linspace":
        grid = np.round(np.linspace(0, T - 1, steps + 1))[::-1][:-1]
    elif spacing == "leading":
        grid = (np.arange(steps) * (T // steps))[::-1]
    else:  # linear
        grid = np.round(np.linspace(T - 1, 0, steps))
    return [int(v) for v in grid]
