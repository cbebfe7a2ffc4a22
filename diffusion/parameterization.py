"""The one place that converts between network outputs and (x0, ε).

Parameterisations (what the network predicts):

* ``"eps"``: the noise ε (Ho et al. 2020);
* ``"x0"``: the clean data x_0;
* ``"v"``: the velocity v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0 (Salimans & Ho 2022, eq. in §4).

All functions take ``alpha_bar_t`` as a Python float or a tensor broadcastable to the state
(e.g. ``(B, 1, 1)``). A tensor ᾱ is square-rooted in its own dtype (pass the float64 schedule
for best precision) and only then cast to the state's dtype/device.

Numerics: ``"eps"`` divides by sqrt(ᾱ_t), which is tiny at t = T-1 (cosine, T=1000:
ᾱ ≈ 2e-9, i.e. ε-errors are amplified ~2e4×; use ``clip_x0``); ``"x0"`` divides by
sqrt(1-ᾱ_t), small at t = 0 (linear: 1e-2; cosine: ~6e-3). Both are > 0 for every
t in [0, T-1] of the shipped schedules, so no epsilon guard is added. ``"v"`` never divides
(unless ``clip_x0`` is used).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PARAMETERIZATIONS = ("eps", "x0", "v")

Scale = Tensor | float


def _check(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"Unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}."
        )


def _sqrt_coefs(alpha_bar_t: Scale, like: Tensor) -> tuple[Scale, Scale]:
    """(sqrt(ᾱ), sqrt(1-ᾱ)) as floats, or tensors cast to ``like``'s dtype/device."""
    if isinstance(alpha_bar_t, Tensor):
        a = alpha_bar_t
        sa, s1 = a.sqrt(), (1.0 - a).sqrt()
        return sa.to(like), s1.to(like)
    a = float(alpha_bar_t)
    return math.sqrt(a), math.sqrt(1.0 - a)


def to_x0_eps(
    output: Tensor,
    x_t: Tensor,
    alpha_bar_t: Scale,
    parameterization: str,
    clip_x0: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Convert a network output to the pair (x0_hat, eps_hat).

    Args:
        output: network output, same shape as ``x_t`` (e.g. ``(B, N, H)``).
        x_t: noisy state.
        alpha_bar_t: ᾱ_t, float or tensor broadcastable to ``x_t`` (e.g. ``(B, 1, 1)``).
        parameterization: one of ``PARAMETERIZATIONS``.
        clip_x0: if > 0, clamp x0_hat to ``[-clip_x0, clip_x0]`` and recompute eps_hat from the
            clamped x0_hat so that ``x_t = sqrt(ᾱ) x0_hat + sqrt(1-ᾱ) eps_hat`` still holds.

    Returns:
        ``(x0_hat, eps_hat)``, each shaped like ``x_t``.
    """
    _check(parameterization)
    sa, s1 = _sqrt_coefs(alpha_bar_t, x_t)
    if parameterization == "eps":
        eps = output
        x0 = (x_t - s1 * eps) / sa
    elif parameterization == "x0":
        x0 = output
        eps = (x_t - sa * x0) / s1
    else:  # v: x0 = sqrt(ᾱ) x_t - sqrt(1-ᾱ) v,  ε = sqrt(1-ᾱ) x_t + sqrt(ᾱ) v
        x0 = sa * x_t - s1 * output
        eps = s1 * x_t + sa * output
    if clip_x0 > 0:
        x0 = torch.clamp(x0, -clip_x0, clip_x0)
        eps = (x_t - sa * x0) / s1
    return x0, eps


def training_target(x0: Tensor, eps: Tensor, alpha_bar_t: Scale, parameterization: str) -> Tensor:
    """What the network should output for clean data ``x0`` and noise ``eps``.

    Args:
        x0: ``(B, ...)`` clean data.
        eps: noise used to build x_t, shaped like ``x0``.
        alpha_bar_t: ᾱ_t, float or tensor broadcastable to ``x0`` (e.g. ``(B, 1, 1)``).
        parameterization: one of ``PARAMETERIZATIONS``.

    Returns:
        ε, x0 or v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0, shaped like ``x0``.
    """
    _check(parameterization)
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    sa, s1 = _sqrt_coefs(alpha_bar_t, x0)
    return sa * eps - s1 * x0
