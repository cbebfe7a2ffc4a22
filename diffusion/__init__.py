"""Parameter-free diffusion math: schedules, parameterisations, losses and samplers."""

from .losses import diffusion_loss
from .parameterization import PARAMETERIZATIONS, to_x0_eps, training_target
from .samplers import (
    DEFAULT_SPACING,
    SAMPLERS,
    Denoise,
    ddim_update,
    ddpm_posterior,
    draws_noise,
    get_sampler,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)
from .schedules import (
    SCHEDULES,
    SPACINGS,
    alpha_bar_at,
    alpha_bar_prev,
    betas,
    log_snr,
    make_alpha_bar,
    posterior_variance,
    q_sample,
    timesteps,
)

__all__ = [
    "DEFAULT_SPACING",
    "PARAMETERIZATIONS",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "Denoise",
    "alpha_bar_at",
    "alpha_bar_prev",
    "betas",
    "ddim_update",
    "ddpm_posterior",
    "draws_noise",
    "diffusion_loss",
    "get_sampler",
    "log_snr",
    "make_alpha_bar",
    "posterior_variance",
    "q_sample",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "timesteps",
    "to_x0_eps",
    "training_target",
]
