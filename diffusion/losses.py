"""Training loss for any parameterisation (dispatch lives in ``parameterization.py``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .parameterization import Scale, training_target


def diffusion_loss(
    output: Tensor,
    x0: Tensor,
    eps: Tensor,
    alpha_bar_t: Scale,
    parameterization: str,
    weight: Tensor | None = None,
) -> Tensor:
    """(Weighted) mean squared error between ``output`` and the training target.

    Args:
        output: network output, e.g. ``(B, N, H)``.
        x0: clean data, shaped like ``output``.
        eps: noise used to build x_t, shaped like ``output``.
        alpha_bar_t: ᾱ_t, float or tensor broadcastable to ``output`` (e.g. ``(B, 1, 1)``).
        parameterization: one of ``PARAMETERIZATIONS``.
        weight: optional non-negative weights broadcastable to ``output`` (e.g. per-variate
            ``(1, N, 1)``). The result is ``sum(w·l) / sum(w)`` with ``w`` broadcast to the
            full shape of the elementwise loss ``l``.

    Returns:
        Scalar tensor.
    """
    target = training_target(x0, eps, alpha_bar_t, parameterization)
    sq = (output - target) ** 2
    if weight is None:
        return sq.mean()
    w = torch.broadcast_to(weight.to(sq), sq.shape)
    return (w * sq).sum() / w.sum()
