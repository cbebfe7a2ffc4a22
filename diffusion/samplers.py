"""Samplers as pure functions (k-diffusion style): one loop over steps, locals only.

Every sampler has the signature ``sampler(denoise, alpha_bar, x_T, *, steps, ...) -> x_0`` where

* ``denoise(x_t, t) -> (x0_hat, eps_hat)`` takes the state and a Python int timestep and
  returns the already converted (and possibly clipped) predictions, see ``parameterization.py``;
* ``alpha_bar`` is the ``(T,)`` float64 schedule; it is read once with ``tolist()`` so the step
  loop does no host-device synchronisation;
* ``x_T`` is the initial standard Gaussian noise of any shape (e.g. ``(B, N, H)``), passed in so
  that different samplers can start from the same noise;
* ``steps`` (``None`` = all ``T``) and ``spacing`` pick the visited timesteps via
  ``schedules.timesteps`` (``None`` = the sampler's ``DEFAULT_SPACING``); after the last visited
  timestep every sampler jumps to ᾱ = 1 and returns the clean sample, shaped like ``x_T``.

Stochastic steps draw their noise from ``generator``: a ``torch.Generator``, None (torch's
default one), or a function x -> noise shaped like x. Samplers run under ``torch.no_grad()``.
Each sampler takes only the keyword arguments it uses (a misspelt one is a TypeError);
``sample(name, ...)`` takes one common set of options and hands each sampler its own.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

from .schedules import timesteps

Denoise = Callable[[Tensor, int], tuple[Tensor, Tensor]]
Noise = Callable[[Tensor], Tensor]  # x -> standard normal noise shaped like x

# The grid each sampler visits when ``spacing`` is None. "trailing" starts at T-1, where x_T is
# (almost) pure noise, and ends at round(T/steps) - 1, so the final jump to ᾱ = 1 is no bigger
# than the other steps. A grid that ends at t = 0 ("linear", "leading") makes DPM-Solver++'s
# last step from λ_0 to λ = ∞ huge and over-disperses its samples (exact-ε Gaussian data,
# cosine, T = 1000: std +33% at 5 steps, +14% at 20), see tests/test_diffusion.py.
DEFAULT_SPACING: dict[str, str] = {"ddpm": "trailing", "ddim": "trailing", "dpm_solver": "trailing"}


def _visits(
    alpha_bar: Tensor, steps: int | None, spacing: str | None, name: str
) -> list[tuple[int, float, float]]:
    """``(t, ᾱ_t, ᾱ_prev)`` for each visited timestep; ᾱ_prev = 1 after the last one.
    ``spacing`` None is sampler ``name``'s default grid."""
    ab = alpha_bar.tolist()
    T = len(ab)
    ts = timesteps(T, T if steps is None else steps, spacing or DEFAULT_SPACING[name])
    prevs = [ab[s] for s in ts[1:]] + [1.0]
    return [(t, ab[t], a_prev) for t, a_prev in zip(ts, prevs)]


def _randn(x: Tensor, generator: torch.Generator | Noise | None) -> Tensor:
    """Standard normal noise shaped like x, from ``generator``, or ``generator(x)`` where it is
    a function (the model's per-sample noise streams)."""
    if callable(generator):
        return generator(x)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def ddpm_posterior(x_t: Tensor, x0_hat: Tensor, a_t: float, a_prev: float) -> tuple[Tensor, float]:
    """Mean and std of q(x_prev | x_t, x0_hat) (Ho et al. 2020, eqs. 6-7).

    With β = 1 - ᾱ_t/ᾱ_prev (the usual β_t for consecutive steps, the respaced β otherwise):
    μ̃ = sqrt(ᾱ_prev) β / (1-ᾱ_t) · x0 + sqrt(1-β) (1-ᾱ_prev) / (1-ᾱ_t) · x_t,
    β̃ = (1-ᾱ_prev) / (1-ᾱ_t) · β. For ᾱ_prev = 1: μ̃ = x0_hat, β̃ = 0.
    """
    beta = 1.0 - a_t / a_prev
    coef_x0 = math.sqrt(a_prev) * beta / (1.0 - a_t)
    coef_xt = math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
    var = (1.0 - a_prev) / (1.0 - a_t) * beta
    return coef_x0 * x0_hat + coef_xt * x_t, math.sqrt(max(var, 0.0))


def ddim_update(
    x0_hat: Tensor, eps_hat: Tensor, a_t: float, a_prev: float, eta: float
) -> tuple[Tensor, float]:
    """Mean and std of the DDIM step (Song et al. 2021, eq. 12 with σ from eq. 16).

    σ = η sqrt((1-ᾱ_prev)/(1-ᾱ_t)) sqrt(1-ᾱ_t/ᾱ_prev);
    mean = sqrt(ᾱ_prev) x0_hat + sqrt(1-ᾱ_prev-σ²) eps_hat. For ᾱ_prev = 1: mean = x0_hat, σ = 0.
    """
    sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
    dir_coef = math.sqrt(max(1.0 - a_prev - sigma**2, 0.0))
    return math.sqrt(a_prev) * x0_hat + dir_coef * eps_hat, sigma


@torch.no_grad()
def sample_ddpm(
    denoise: Denoise,
    alpha_bar: Tensor,
    x_T: Tensor,
    *,
    steps: int | None = None,
    spacing: str | None = None,
    generator: torch.Generator | Noise | None = None,
) -> Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2, posterior-mean form of eq. 7).

    ``steps=None`` (or ``T``) is the classical chain over all timesteps with variance β̃_t;
    fewer steps give the respaced chain (identical to DDIM with η = 1 on the sub-sequence).
    No noise is added on the last step, which returns x0_hat.
    """
    x = x_T
    for t, a_t, a_prev in _visits(alpha_bar, steps, spacing, "ddpm"):
        x0_hat, _eps = denoise(x, t)
        mean, std = ddpm_posterior(x, x0_hat, a_t, a_prev)  # eq. 7
        x = mean + std * _randn(x, generator) if std > 0 else mean
    return x


@torch.no_grad()
def sample_ddim(
    denoise: Denoise,
    alpha_bar: Tensor,
    x_T: Tensor,
    *,
    steps: int | None = None,
    spacing: str | None = None,
    eta: float = 0.0,
    generator: torch.Generator | Noise | None = None,
) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12); η = 0 is deterministic, η = 1 is DDPM-like.

    The step after the last visited timestep goes to ᾱ_prev = 1 and returns x0_hat.
    """
    x = x_T
    for t, a_t, a_prev in _visits(alpha_bar, steps, spacing, "ddim"):
        x0_hat, eps_hat = denoise(x, t)
        mean, sigma = ddim_update(x0_hat, eps_hat, a_t, a_prev, eta)  # eq. 12
        x = mean + sigma * _randn(x, generator) if sigma > 0 else mean
    return x


def _half_log_snr(a: float) -> float:
    """λ = log(α/σ) with α = sqrt(ᾱ), σ = sqrt(1-ᾱ) (Lu et al. 2022, §2)."""
    return 0.5 * (math.log(a) - math.log1p(-a))


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoise,
    alpha_bar: Tensor,
    x_T: Tensor,
    *,
    steps: int | None = None,
    spacing: str | None = None,
) -> Tensor:
    """DPM-Solver++(2M), data prediction (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

    Uses one denoiser call per visited timestep. The first step is first order (no history);
    the final step to ᾱ = 1 (σ = 0, λ = ∞) is first order as well ("lower_order_final"), where
    the update reduces exactly to x0_hat. Deterministic. Equals diffusers'
    DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    final_sigmas_type="zero") on the same grid.
    """
    visits = _visits(alpha_bar, steps, spacing, "dpm_solver")
    x = x_T
    x0_old: Tensor | None = None
    h_old = 0.0
    for t, a_t, a_next in visits[:-1]:
        x0_hat, _eps = denoise(x, t)
        h = _half_log_snr(a_next) - _half_log_snr(a_t)  # h_i = λ_{t_i} - λ_{t_{i-1}}
        if x0_old is None:
            d = x0_hat  # first order: DPM-Solver++(1) = DDIM (eq. 9 of the paper)
        else:
            r = h_old / h  # r_i = h_{i-1} / h_i
            d = (1.0 + 1.0 / (2.0 * r)) * x0_hat - (1.0 / (2.0 * r)) * x0_old  # D_i
        # x_{t_i} = σ_{t_i}/σ_{t_{i-1}} x - α_{t_i} (e^{-h_i} - 1) D_i
        x = math.sqrt((1.0 - a_next) / (1.0 - a_t)) * x - math.sqrt(a_next) * math.expm1(-h) * d
        x0_old, h_old = x0_hat, h
    # Final first-order step to σ = 0: σ_next/σ = 0 and -(e^{-∞} - 1) = 1, so x_0 = x0_hat.
    x0_hat, _eps = denoise(x, visits[-1][0])
    return x0_hat


Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpm_solver": sample_dpmpp_2m,
}


def draws_noise(name: str, eta: float = 0.0) -> bool:
    """Whether a sampler draws fresh noise at its steps (DDPM, DDIM with eta > 0), so that its
    result depends on the generator's state at every step, not only on ``x_T``."""
    get_sampler(name)
    return name == "ddpm" or (name == "ddim" and eta > 0)


def get_sampler(name: str) -> Sampler:
    """Look up a sampler by name; raises ValueError listing the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {tuple(SAMPLERS)}.")
    return SAMPLERS[name]


def sample(
    name: str,
    denoise: Denoise,
    alpha_bar: Tensor,
    x_T: Tensor,
    *,
    steps: int | None = None,
    spacing: str | None = None,
    eta: float = 0.0,
    generator: torch.Generator | Noise | None = None,
) -> Tensor:
    """Run sampler ``name`` from ``x_T`` and return x_0, shaped like ``x_T``.

    ``steps`` None visits all ``T`` timesteps; ``spacing`` None is ``DEFAULT_SPACING[name]``.
    ``eta`` is DDIM's (η = 0 deterministic, 1 DDPM-like); a non-zero ``eta`` for another sampler
    is a ValueError. ``generator`` feeds the stochastic steps (DDPM, DDIM with η > 0); the
    deterministic samplers do not take it.
    """
    sampler = get_sampler(name)
    takes = inspect.signature(sampler).parameters
    if eta != 0 and "eta" not in takes:
        raise ValueError(f"eta={eta} applies to 'ddim' only; sampler {name!r} takes no eta.")
    options = {"steps": steps, "spacing": spacing, "eta": eta, "generator": generator}
    return sampler(denoise, alpha_bar, x_T, **{k: v for k, v in options.items() if k in takes})
