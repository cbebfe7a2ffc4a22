"""iTransformerDiffusion: an iTransformer point forecast plus a diffused residual (ε-prediction).

The iTransformer backbone gives a point forecast y_det and variate tokens z (B, N, d_model).
A UNet1D denoiser, conditioned on z (FiLM + cross-attention) and on the normalised point
forecast (extra input channels, ``--cond_forecast``), learns the distribution of

    x0 = normalize(y) - normalize(y_det)            (the residual, in instance-normalised units)

so that a sample is y_det + denormalised residual sample. With ``--marginal empirical`` each
(variate, step) of x0 is first mapped to N(0, 1) through its quantiles on the training windows,
u = Φ⁻¹(F̂(x0)), and samples are mapped back, x0 = F̂⁻¹(Φ(u)): the network then learns the
conditional and joint structure of a target with standard normal marginals (a Gaussian copula),
and the residuals' heavy tails come from their empirical quantiles. ``iTransformerDiffusionDirect``
(x0-prediction) diffuses normalize(y) itself. Everything diffusion-specific (schedule,
parameterisation, samplers) comes from ``diffusion/``; the network knows nothing about it.

Conventions: TSLib tensors (B, L, N); diffusion state (B, N, H); samples (S, B, H, N).
"""

from __future__ import annotations

import copy
from argparse import Namespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion import (
    alpha_bar_at,
    diffusion_loss,
    draws_noise,
    make_alpha_bar,
    q_sample,
    to_x0_eps,
)
from diffusion import (
    sample as run_sampler,
)
from layers.Diffusion_layers import UNet1D, UNetCondition
from models import iTransformer
from utils.baselines import QuantileTable, quantile_table_lookup
from utils.metrics import quantiles_from_sorted
from utils.tools import CompiledOrEager

# Arguments (beyond the backbone's) that decide this model's shapes or meaning.
ARCH_ARGS = (
    "diffusion_steps", "beta_schedule", "parameterization", "cond_dim", "unet_channels",
    "cond_forecast", "marginal",
)  # fmt: skip

STAGES = ("warmup", "joint")

# Floor of the instance σ that scales the diffused quantities, in the data's units (TSLib
# standardises every variate on the training split). A lookback window that is flat in some
# variate (a third of ETTm2's training windows have a variate with σ < 0.01) would otherwise
# blow its residual up by 100× or more and dominate the diffusion loss.
STD_FLOOR = 0.1

#: Levels of the per-(variate, step) quantile table of ``--marginal empirical``.
MARGINAL_LEVELS = 201
#: The Gaussianised target is kept within Φ⁻¹(ε) … Φ⁻¹(1 − ε), about ±3.7.
MARGINAL_EPS = 1e-4


def diffusion_normalizer(norm: iTransformer.Normalizer) -> iTransformer.Normalizer:
    """The backbone's instance normaliser with σ floored at ``STD_FLOOR``, for the diffusion."""
    out = copy.copy(norm)
    out.stdev = norm.stdev.clamp_min(STD_FLOOR)
    return out


def parse_channels(spec: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    if isinstance(spec, str):
        return tuple(int(c) for c in spec.split(","))
    return tuple(spec)


def per_sample_noise(seeds: list[int], device: torch.device):
    """Noise for window-major rows (B·n, ...) of n samples: sample i's rows come from its own
    generator, seeded with seeds[i], whatever else shares the chunk."""
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def noise(x: Tensor) -> Tensor:
        shape = (x.shape[0] // len(generators), *x.shape[1:])  # (B, ...)
        draws = [torch.randn(shape, generator=g, device=x.device, dtype=x.dtype)
                 for g in generators]  # fmt: skip
        return torch.stack(draws, dim=1).view(x.shape)  # (B, n, ...) -> (B·n, ...)

    return noise


def chunk_sizes(n_samples: int, per_chunk: int) -> list[int]:
    """Samples per chunk: full chunks of ``per_chunk`` and the rest."""
    per_chunk = max(1, min(per_chunk, n_samples))
    full, rest = divmod(n_samples, per_chunk)
    return [per_chunk] * full + ([rest] if rest else [])


def to_gaussian(x: Tensor, table: Tensor) -> Tensor:
    """Φ⁻¹ of the level of x (..., N, H) in the quantile table (K, N, H) of its (n, h),
    linear between the table's quantiles: x's marginal becomes about N(0, 1)."""
    K = table.shape[0]
    seq = table.reshape(K, -1).T.contiguous()  # (N·H, K)
    flat = x.reshape(-1, seq.shape[0]).T.contiguous().to(seq.dtype)  # (N·H, M)
    hi = torch.searchsorted(seq, flat).clamp(1, K - 1)
    lo = hi - 1
    v_lo, v_hi = seq.gather(1, lo), seq.gather(1, hi)
    level = (lo + ((flat - v_lo) / (v_hi - v_lo).clamp_min(1e-12)).clamp(0, 1)) / (K - 1)
    u = torch.special.ndtri(level.clamp(MARGINAL_EPS, 1 - MARGINAL_EPS))
    return u.T.reshape(x.shape).to(x.dtype)


def from_gaussian(u: Tensor, table: Tensor) -> Tensor:
    """Inverse of ``to_gaussian``: the table's quantile function at Φ(u)."""
    levels = torch.linspace(0, 1, table.shape[0], dtype=torch.float64, device=u.device)
    x = quantile_table_lookup(QuantileTable(levels, table), torch.special.ndtr(u.double()))
    return x.to(u.dtype)


class Model(nn.Module):
    residual = True  # diffuse y - y_det rather than y
    default_parameterization = "v"  # eps diverges at the cosine schedule's end (see README)
    default_clip_x0 = 0.0

    def __init__(self, configs: Namespace):
        super().__init__()
        self.pred_len = configs.pred_len
        self.n_vars = configs.enc_in
        self.backbone = iTransformer.Model(configs)
        self.parameterization = configs.parameterization or self.default_parameterization
        clip = getattr(configs, "clip_x0", None)
        self.clip_x0 = self.default_clip_x0 if clip is None else clip
        self.loss_lambda = configs.loss_lambda
        self.cond_forecast = bool(configs.cond_forecast)
        self.denoiser = UNet1D(
            n_vars=configs.enc_in,
            d_model=configs.d_model,
            cond_dim=configs.cond_dim,
            channels=parse_channels(configs.unet_channels),
            extra_in_channels=configs.enc_in if self.cond_forecast else 0,
        )
        # (T,) float64 on the CPU, derived from the arguments (so not part of the state dict).
        self.alpha_bar = make_alpha_bar(configs.beta_schedule, configs.diffusion_steps)
        self.marginal = getattr(configs, "marginal", None) or "none"
        if self.marginal == "empirical":  # quantiles (K, N, H) of the target, set by fit_marginal
            self.register_buffer(
                "marginal_table", torch.zeros(MARGINAL_LEVELS, configs.enc_in, configs.pred_len)
            )
        self._compiled: CompiledOrEager | None = None  # set by compile_denoiser()

    # ---- the two halves ----------------------------------------------------------------------
    def backbone_forward(self, x_enc: Tensor, x_mark_enc: Tensor | None):
        """→ y_det (B, H, N) in input units, z (B, N, d_model), the window's Normalizer."""
        return self.backbone.backbone_forward(x_enc, x_mark_enc)

    def normalised_target(self, y: Tensor, y_det: Tensor, norm) -> Tensor:
        """The residual (or target) in instance-normalised units (σ floored), (B, N, H)."""
        norm = diffusion_normalizer(norm)
        x0 = norm.normalize(y)
        if self.residual:
            x0 = x0 - norm.normalize(y_det.detach())
        return x0.permute(0, 2, 1)

    def diffusion_target(self, y: Tensor, y_det: Tensor, norm) -> Tensor:
        """What is diffused: (B, N, H); with ``--marginal empirical``, Gaussianised."""
        x0 = self.normalised_target(y, y_det, norm)
        return to_gaussian(x0, self._table()) if self.marginal == "empirical" else x0

    @torch.no_grad()
    def fit_marginal(self, x0: Tensor) -> None:
        """The ``--marginal empirical`` table: quantiles per (n, h) of the normalised targets
        x0 (W, N, H) of W training windows (``normalised_target``), at ``MARGINAL_LEVELS``
        levels from 0 (the minimum) to 1 (the maximum), made strictly ascending."""
        levels = torch.linspace(0, 1, MARGINAL_LEVELS, dtype=torch.float64)
        table = quantiles_from_sorted(torch.sort(x0.double().cpu(), dim=0).values, levels)
        ramp = torch.arange(MARGINAL_LEVELS, dtype=torch.float64) * 1e-5
        self.marginal_table.copy_(table + ramp.view(-1, 1, 1))

    def _table(self) -> Tensor:
        if not bool(self.marginal_table[-1].gt(self.marginal_table[0]).all()):
            raise RuntimeError(
                "the marginal table is not fitted: call fit_marginal on training targets "
                "(training does) or build the model with --marginal none"
            )
        return self.marginal_table

    def from_diffusion(self, x0: Tensor, y_det: Tensor, norm) -> Tensor:
        """Inverse of ``diffusion_target``: (R, B, N, H) → forecasts (R, B, H, N) in input units."""
        norm = diffusion_normalizer(norm)
        if self.marginal == "empirical":
            x0 = from_gaussian(x0, self._table())
        x = x0.permute(0, 1, 3, 2)  # (R, B, H, N)
        if self.residual:
            x = x + norm.normalize(y_det)
        return norm.denormalize(x)

    def _extra(self, y_det: Tensor, norm) -> Tensor | None:
        """The normalised point forecast as extra denoiser input, (B, N, H), or None."""
        if not self.cond_forecast:
            return None
        return diffusion_normalizer(norm).normalize(y_det.detach()).permute(0, 2, 1)

    # ---- training ----------------------------------------------------------------------------
    def loss(self, x_enc: Tensor, x_mark_enc: Tensor | None, y: Tensor, stage: str):
        """Stage-aware loss → (total, {"mse": ..., "diff": ...}).

        warmup: MSE of the point forecast. joint: λ·MSE + (1−λ)·diffusion loss.
        """
        y_det, z, norm = self.backbone_forward(x_enc, x_mark_enc)
        loss_mse = F.mse_loss(y_det.float(), y)
        if stage == "warmup":
            return loss_mse, {"mse": loss_mse.detach()}
        loss_diff = self.diffusion_loss(y, y_det, z, norm)
        total = self.loss_lambda * loss_mse + (1.0 - self.loss_lambda) * loss_diff
        return total, {"mse": loss_mse.detach(), "diff": loss_diff.detach()}

    def diffusion_loss(
        self, y, y_det, z, norm, generator: torch.Generator | None = None,
        window_weight: Tensor | None = None,
    ):  # fmt: skip
        """Denoising loss at one random step per window; ``window_weight`` (B, N, 1), if given,
        weights the windows and variates."""
        x0 = self.diffusion_target(y, y_det, norm).float()  # (B, N, H)
        B = x0.shape[0]
        T = len(self.alpha_bar)
        t = torch.randint(0, T, (B,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = q_sample(x0, t, self.alpha_bar, noise)
        cond = self.denoiser.encode_condition(z, extra=self._extra(y_det, norm))
        out = self.denoiser(x_t, t, cond).float()
        a_t = alpha_bar_at(self.alpha_bar, t, x0)
        return diffusion_loss(out, x0, noise, a_t, self.parameterization, window_weight)

    def forward(self, x_enc, x_mark_enc=None, x_dec=None, x_mark_dec=None, *, y=None, stage=None):
        """TSLib interface: the point forecast (B, H, N); with ``y`` and ``stage``, the training
        loss (so that DistributedDataParallel sees the training step as a forward call)."""
        if stage is not None:
            return self.loss(x_enc, x_mark_enc, y, stage)
        return self.backbone_forward(x_enc, x_mark_enc)[0]

    # ---- sampling ----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(
        self,
        x_enc: Tensor,
        x_mark_enc: Tensor | None,
        n_samples: int = 100,
        sampler: str = "ddim",
        steps: int | None = 50,
        **options,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Probabilistic forecast → (mean (B, H, N), std (B, H, N), samples (S, B, H, N)), in
        the input's units; ``options`` as in ``sample``."""
        y_det, z, norm = self.backbone_forward(x_enc, x_mark_enc)  # once per window
        samples = self.sample(y_det, z, norm, n_samples, sampler, steps, **options)
        return samples.mean(0), samples.std(0, correction=0), samples

    @torch.inference_mode()
    def sample(
        self,
        y_det: Tensor,
        z: Tensor,
        norm: iTransformer.Normalizer,
        n_samples: int = 100,
        sampler: str = "ddim",
        steps: int | None = 50,
        eta: float = 0.0,
        spacing: str | None = None,
        generator: torch.Generator | None = None,
        sample_chunk: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        center: bool = False,
    ) -> Tensor:
        """Samples (S, B, H, N) in input units, given the backbone's outputs for B windows.

        The condition (pooled z, cross-attention keys and values, the point forecast's first
        convolution) is computed once; all S·B trajectories are denoised as one batch, split
        only into chunks of at most ``sample_chunk`` trajectories (None: one chunk).
        ``generator`` drives the initial noise and the seeds of any stochastic steps: sample s
        starts from the generator's s-th draw and draws its step noise from a stream of its
        own, so a seed gives the same samples however the work is chunked. ``center`` shifts
        each window's samples so that their mean is the point forecast.
        """
        cond = self.denoiser.encode_condition(z, extra=self._extra(y_det, norm))
        B, H, N = y_det.shape
        device = y_det.device
        per_chunk = max(1, (sample_chunk or n_samples * B) // B)
        out = torch.empty((n_samples, B, H, N), device=device)  # (S, B, H, N)
        stochastic = draws_noise(sampler, eta)
        start = 0
        for n in chunk_sizes(n_samples, per_chunk):
            x_T, seeds = [], []
            for _ in range(n):  # in sample order, from the one generator
                x_T.append(torch.randn((B, N, H), generator=generator, device=device))
                if stochastic:
                    seeds.append(
                        int(torch.randint(1 << 62, (1,), generator=generator, device=device))
                    )
            x_T = torch.stack(x_T, dim=1).view(B * n, N, H)  # window-major rows
            noise = per_sample_noise(seeds, device) if stochastic else None
            x0 = self._denoise_chunk(cond, x_T, sampler, steps, eta, spacing, noise, autocast_dtype)
            x0 = x0.view(B, n, N, H).transpose(0, 1)  # (n, B, N, H)
            out[start : start + n] = self.from_diffusion(x0, y_det, norm)
            start += n
        if center:  # each window's sample mean becomes the backbone's point forecast
            out += y_det.float() - out.mean(0)
        return out

    def compile_denoiser(self) -> None:
        """Use ``torch.compile`` for the denoiser where it works; fall back to eager otherwise."""
        self._compiled = CompiledOrEager(self.denoiser)

    def _denoise_chunk(
        self, cond: UNetCondition, x_T: Tensor, sampler, steps, eta, spacing, noise,
        autocast_dtype,
    ) -> Tensor:  # fmt: skip
        """Denoise the B·n window-major trajectories of x_T (B·n, N, H) → x0 (B·n, N, H)."""
        ab = self.alpha_bar.tolist()
        param, clip = self.parameterization, self.clip_x0
        net = self._compiled or self.denoiser
        device = x_T.device

        def denoise(x_t: Tensor, t: int) -> tuple[Tensor, Tensor]:
            # the step as a tensor (a fill, no host-device copy), so that a compiled denoiser
            # has one graph for all steps rather than one per step value
            out = net(x_t, torch.full((1,), float(t), device=device), cond).float()
            return to_x0_eps(out, x_t, ab[t], param, clip)

        # one autocast region for the whole chunk, so that each weight is cast once; the
        # sampler's arithmetic is elementwise, which autocast leaves in float32
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return run_sampler(
                sampler, denoise, self.alpha_bar, x_T, steps=steps, spacing=spacing, eta=eta,
                generator=noise,
            )  # fmt: skip
