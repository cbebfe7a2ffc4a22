"""Noise schedules and the forward process q(x_t | x_0).

Conventions used throughout ``diffusion/``:

* a timestep index ``t`` lies in ``[0, T-1]``;
* ``alpha_bar`` is a 1-D float64 CPU tensor of length ``T`` with
  ``alpha_bar[t] = ᾱ_t = prod_{s<=t} (1 - β_s)`` (Ho et al. 2020, eq. 4);
* state tensors may have any shape (the models use ``(B, N, H)``); everything broadcasts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")
SPACINGS = ("linear", "trailing")

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


def timesteps(T: int, steps: int, spacing: str = "linear") -> list[int]:
    """Descending list of ``steps`` distinct timesteps in ``[0, T-1]`` to visit when sampling.

    * ``"linear"``: ``round(linspace(T-1, 0, steps))`` – evenly spaced and including both ends
      (for ``steps == 1`` this is ``[T-1]``). Unlike the DDIM paper's "leading" grid
      ``0, c, 2c, ...`` it always starts at ``T-1``, where x_T is (almost) pure noise.
    * ``"trailing"``: Lin et al. 2023 (Table 2), ``round(T - i·T/steps) - 1`` for
      ``i = 0..steps-1``; starts exactly at ``T-1`` and ends at ``round(T/steps) - 1``.

    ``steps == T`` gives every timestep ``T-1, ..., 0`` for both spacings.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T} inclusive, got {steps}.")
    if spacing == "linear":
        grid = np.round(np.linspace(T - 1, 0, steps))
    elif spacing == "trailing":
        grid = np.round(T - np.arange(steps) * (T / steps)) - 1
    else:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {SPACINGS}.")
    return [int(v) for v in grid]
