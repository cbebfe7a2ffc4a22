"""iTransformerDiffusion: an iTransformer point forecast plus a diffused residual (ε-prediction).

The iTransformer backbone gives a point forecast y_det and variate tokens z (B, N, d_model).
A UNet1D denoiser, conditioned on z (FiLM + cross-attention) and on the normalised point
forecast (extra input channels, ``--cond_forecast``), learns the distribution of

    x0 = normalize(y) - normalize(y_det)            (the residual, in instance-normalised units)

so that a sample is y_det + denormalised residual sample. ``iTransformerDiffusionDirect``
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
    get_sampler,
    make_alpha_bar,
    q_sample,
    to_x0_eps,
)
from layers.Diffusion_layers import UNet1D
from models import iTransformer
from utils.metrics import sample_std
from utils.tools import CompiledOrEager, free_memory_bytes, run_on_threads

# Arguments (beyond the backbone's) that decide this model's shapes or meaning.
ARCH_ARGS = (
    "diffusion_steps", "beta_schedule", "parameterization", "cond_dim", "unet_channels",
    "cond_forecast",
)  # fmt: skip

STAGES = ("warmup", "joint")

# Floor of the instance σ that scales the diffused quantities, in the data's units (TSLib
# standardises every variate on the training split). A lookback window that is flat in some
# variate (a third of ETTm2's training windows have a variate with σ < 0.01) would otherwise
# blow its residual up by 100× or more and dominate the diffusion loss.
STD_FLOOR = 0.1


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
    """Noise for sample-major rows (n·B, ...) of n samples: sample i's (B, ...) rows come from
    its own generator, seeded with seeds[i], whatever else shares the chunk."""
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def noise(x: Tensor) -> Tensor:
        shape = (x.shape[0] // len(generators), *x.shape[1:])
        draws = [torch.randn(shape, generator=g, device=x.device, dtype=x.dtype)
                 for g in generators]  # fmt: skip
        return torch.cat(draws)

    return noise


def chunk_sizes(n_samples: int, per_chunk: int, threads: int = 1) -> list[int]:
    """Samples per chunk, at most ``per_chunk`` each: full chunks and the rest; for several
    threads, a multiple of ``threads`` chunks of near-equal size, so that the threads finish
    together rather than one waiting while the other denoises the last chunk."""
    per_chunk = max(1, min(per_chunk, n_samples))
    if threads <= 1:
        full, rest = divmod(n_samples, per_chunk)
        return [per_chunk] * full + ([rest] if rest else [])
    count = -(-n_samples // per_chunk)
    count = min(n_samples, -(-count // threads) * threads)
    base, extra = divmod(n_samples, count)
    return [base + (i < extra) for i in range(count)]


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
        self.variate_weight: Tensor | None = None  # optional (N,) loss weights
        self._compiled: CompiledOrEager | None = None  # set by compile_denoiser()

    # ---- the two halves ----------------------------------------------------------------------
    def backbone_forward(self, x_enc: Tensor, x_mark_enc: Tensor | None):
        """→ y_det (B, H, N) in input units, z (B, N, d_model), the window's Normalizer."""
        return self.backbone.backbone_forward(x_enc, x_mark_enc)

    def diffusion_target(self, y: Tensor, y_det: Tensor, norm) -> Tensor:
        """What is diffused: (B, N, H) in instance-normalised units (σ floored)."""
        norm = diffusion_normalizer(norm)
        x0 = norm.normalize(y)
        if self.residual:
            x0 = x0 - norm.normalize(y_det.detach())
        return x0.permute(0, 2, 1)

    def from_diffusion(self, x0: Tensor, y_det: Tensor, norm) -> Tensor:
        """Inverse of ``diffusion_target``: (R, B, N, H) → forecasts (R, B, H, N) in input units."""
        norm = diffusion_normalizer(norm)
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
        """Denoising loss of a random step per window; ``window_weight`` (B, N, 1) optionally
        reweights windows and variates (times the per-variate ``variate_weight``)."""
        x0 = self.diffusion_target(y, y_det, norm).float()  # (B, N, H)
        B = x0.shape[0]
        T = len(self.alpha_bar)
        t = torch.randint(0, T, (B,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = q_sample(x0, t, self.alpha_bar, noise)
        out = self.denoiser(x_t, t, z, extra=self._extra(y_det, norm)).float()
        weight = window_weight
        if self.variate_weight is not None:
            variate = self.variate_weight.to(x0.device).view(1, -1, 1)
            weight = variate if weight is None else weight * variate
        a_t = alpha_bar_at(self.alpha_bar, t, x0)
        return diffusion_loss(out, x0, noise, a_t, self.parameterization, weight)

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
        eta: float = 0.0,
        spacing: str = "linear",
        generator: torch.Generator | None = None,
        sample_chunk: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        center: bool = False,
        workers: int | None = None,
    ):
        """Probabilistic forecast → (mean (B, H, N), std (B, H, N), samples (S, B, H, N)).

        The backbone and everything derived from z run once per window; all S·B trajectories
        are denoised as one batch, split only into chunks of at most ``sample_chunk`` rows
        (on a CPU, chunks run side by side on ``workers`` threads, see ``sample_workers``).
        ``generator`` drives the initial noise and any stochastic steps.
        """
        y_det, z, norm = self.backbone_forward(x_enc, x_mark_enc)  # once per window
        samples = self.sample(
            y_det, z, norm, n_samples, sampler, steps, eta, spacing, generator, sample_chunk,
            autocast_dtype, center, workers,
        )  # fmt: skip
        return samples.mean(0), sample_std(samples), samples

    @torch.inference_mode()
    def sample(
        self, y_det, z, norm, n_samples=100, sampler="ddim", steps=50, eta=0.0,
        spacing="linear", generator=None, sample_chunk=None, autocast_dtype=None, center=False,
        workers=None,
    ) -> Tensor:  # fmt: skip
        """Samples (S, B, H, N) in input units, given the backbone's outputs for the windows."""
        # pooled z, cross-attention k/v and the point forecast's first convolution, once
        cond = self.denoiser.encode_condition(z, extra=self._extra(y_det, norm))
        B, H, N = y_det.shape
        device = y_det.device
        sizes, threads = self.chunk_plan(n_samples, B, device, sample_chunk, workers)
        chunks = [(sum(sizes[:i]), n) for i, n in enumerate(sizes)]  # (first sample, count)
        out = torch.empty((n_samples, B, H, N), device=device)  # (S, B, H, N)
        per_step_noise = draws_noise(sampler, eta)

        def draw(chunk: tuple[int, int]) -> tuple[Tensor, list[int] | None]:
            """The chunk's initial noise (n·B, N, H), sample-major, and for samplers that draw
            noise at every step a seed per sample, all from ``generator`` in sample order: a
            sample's randomness depends on its index only, not on the chunks or the threads
            (one draw of several samples' values is not always their separate draws); the
            looped original draws its initial noise the same way."""
            x_T, seeds = [], []
            for _ in range(chunk[1]):
                x_T.append(torch.randn((B, N, H), generator=generator, device=device))
                if per_step_noise:
                    seed = torch.randint(1 << 62, (1,), generator=generator, device=device)
                    seeds.append(seed)
            return torch.cat(x_T), (torch.cat(seeds).tolist() if per_step_noise else None)

        def denoise_chunk(chunk: tuple[int, int], drawn) -> None:
            (start, n), (x_T, seeds) = chunk, drawn
            noise = per_sample_noise(seeds, device) if seeds is not None else generator
            x0 = self._sample_chunk(
                cond, x_T, B, sampler, steps, eta, spacing, noise, autocast_dtype
            )
            out[start : start + n] = self.from_diffusion(x0.view(n, B, N, H), y_det, norm)

        if threads > 1 and len(chunks) > 1:
            run_on_threads(denoise_chunk, chunks, draw, threads)
        else:
            for chunk in chunks:
                denoise_chunk(chunk, draw(chunk))
        if center:  # each window's sample mean becomes the backbone's point forecast
            out += y_det.float() - out.mean(0)
        return out

    def chunk_plan(
        self, n_samples: int, windows: int, device: torch.device,
        sample_chunk: int | None = None, workers: int | None = None,
    ) -> tuple[list[int], int]:  # fmt: skip
        """How ``sample`` splits the work: (samples per chunk, threads that run the chunks)."""
        threads = self.sample_workers(device, workers)
        # each thread has a chunk in flight: the automatic size is shared between them
        rows = sample_chunk or max(1, self.auto_sample_chunk(self.pred_len, device) // threads)
        return chunk_sizes(n_samples, max(1, rows // windows), threads), threads

    def sample_workers(self, device: torch.device, workers: int | None = None) -> int:
        """Threads that denoise chunks side by side: ``workers`` if given (0 or None: 2), at
        most torch's thread count, each thread using its share of torch's threads.

        On a CPU, two chunks on one core each ran up to 1.4x faster than one chunk at a time
        on both cores (2-core CPU, README "Sampling speed"): no barrier after every operation,
        and one chunk's Python work overlaps the other's arithmetic. One chunk at a time (1)
        on a GPU and with a compiled denoiser (compiling is not thread-safe)."""
        if device.type != "cpu" or self._compiled is not None:
            return 1
        return max(1, min(workers or 2, torch.get_num_threads()))

    def auto_sample_chunk(self, H: int, device: torch.device) -> int:
        """Most trajectories per chunk that fit a share of the free memory.

        The estimate counts, per trajectory in float32, the sampler's tensors of the state's
        size and about eight UNet feature maps per level alive at once during inference.
        """
        unet = self.denoiser
        L = H + (-H % unet.multiple)
        # state, noise, network input and output, x0/eps estimates, the update: ~12 maps of N·L
        floats = 12 * (self.n_vars + unet.extra_in_channels) * L
        for level, channels in enumerate(unet.channels):
            floats += 8 * channels * max(1, L >> level)
        budget = free_memory_bytes(device) // (2 if device.type == "cuda" else 4)
        if device.type != "cuda":
            # CPU: chunks of ~128 MiB of activations stay in cache-friendly sizes; on a 2-core
            # CPU, 3200 rows at once ran 1.5-2x slower per trajectory than 512-1024 rows
            budget = min(budget, 1 << 27)
        return max(1, int(budget // (4 * floats)))

    def compile_denoiser(self) -> None:
        """Use ``torch.compile`` for the denoiser where it works; fall back to eager otherwise."""
        self._compiled = CompiledOrEager(self.denoiser)

    def _sample_chunk(
        self, cond, x_T, B, sampler, steps, eta, spacing, noise, autocast_dtype
    ) -> Tensor:
        """Denoise the n·B trajectories of x_T (n·B, N, H) at once → x0 (n·B, N, H), rows
        sample-major (row s·B + b is sample s of window b); ``noise`` feeds stochastic steps
        (a generator or a function, see ``diffusion.samplers``)."""
        nB, N, H = x_T.shape
        n = nB // B
        device = x_T.device
        cond_n = cond.repeat(n)  # serves window-major rows
        ab = self.alpha_bar.tolist()
        param, clip = self.parameterization, self.clip_x0
        net = self._compiled or self.denoiser

        def denoise(x_t: Tensor, t: int) -> tuple[Tensor, Tensor]:
            # the sampler's rows are sample-major (the noise streams do not depend on the
            # layout); the network's window-major rows put each window's samples side by side
            x_in = x_t.view(n, B, N, H).transpose(0, 1).reshape(n * B, N, H)
            # the step as a tensor (a fill, no host-device copy), so that a compiled denoiser
            # has one graph for all steps rather than one per step value
            t_in = torch.full((1,), float(t), device=device)
            out = net(x_in, t_in, cond_n).float()
            out = out.view(B, n, N, H).transpose(0, 1).reshape(n * B, N, H)
            return to_x0_eps(out, x_t, ab[t], param, clip)

        # one autocast region for the whole chunk, so that each weight is cast once, not at
        # every step; the sampler's arithmetic is elementwise, which autocast leaves in float32
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return get_sampler(sampler)(
                denoise, self.alpha_bar, x_T, steps=steps, eta=eta, spacing=spacing,
                generator=noise,
            )  # fmt: skip
