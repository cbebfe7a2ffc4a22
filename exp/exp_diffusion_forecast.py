"""Probabilistic forecasting with a diffusion head on an iTransformer (``diffusion_forecast``).

Stage 1 (warm-up) trains the backbone on MSE with early stopping on validation MSE. Stage 2
freezes the embedding and encoder and trains the head (small lr) and the denoiser on
λ·MSE + (1−λ)·diffusion loss; its checkpoint is chosen on the validation *diffusion* loss
(fixed seed, so epochs are comparable), never on point MSE. Testing draws ``--n_samples``
trajectories per window with any sampler and scores the whole test set with proper scores,
next to baselines built from the stage-1 backbone and fitted on validation data only
(``exp/baselines.py``). The concepts live in their own modules: scoring in ``exp/evaluation.py``,
spread calibration in ``exp/calibration.py``, the future forecast's table in ``exp/forecast.py``.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from data_provider.data_factory import time_marks
from data_provider.data_loader import future_dates
from exp import baselines
from exp.calibration import (
    SCALES,
    UNIT,
    apply_spread,
    best_scale,
    calibration_key,
    clip_samples,
    crps_by_spread_scale,
)
from exp.evaluation import PROB_METRICS, Evaluation, format_table
from exp.exp_basic import CheckpointError, Exp_Basic, TrainingLoopMixin, read_checkpoint
from exp.forecast import forecast_table, plot_forecast
from models.iTransformerDiffusion import diffusion_normalizer
from utils import distributed
from utils.args import bounds_text
from utils.tools import (
    EarlyStopping,
    atomic_save,
    free_memory_bytes,
    progress,
    rng_state,
    set_rng_state,
)

log = logging.getLogger("tsdiff")

LAST = "checkpoint_last.pth"  # the training state after the last finished epoch (--resume)


class Exp_Diffusion_Forecast(TrainingLoopMixin, Exp_Basic):
    supported_models = ("iTransformerDiffusion", "iTransformerDiffusionDirect")

    def __init__(self, args):
        super().__init__(args)
        if args.compile:
            self.unwrapped_model().compile_denoiser()
        self.ema: AveragedModel | None = None
        self.stage1_head: nn.Linear = copy.deepcopy(self.unwrapped_model().backbone.projection)
        self.baseline_fit: dict[str, Tensor] | None = None  # see exp/baselines.py
        self.calibration: dict[str, list[float]] = {}  # spread factors per sampling setting
        self.spread_scale: Tensor | None = None  # (N',) the factors of the current setting
        # what the checkpoints carry about the data (see data_meta) and the scaler in use: the
        # training rows' mean_ and scale_ of every column, (N,) each
        self.data_meta: dict | None = None
        self.scaler: tuple[np.ndarray, np.ndarray] | None = None
        if getattr(args, "bounds", None):
            log.info("Samples are kept within %s in original units", bounds_text(args.bounds))

    # ---- one batch, shared by training and validation ------------------------------------
    def _batch_loss(self, batch, stage: str):
        x, y, x_mark, _ = self._to_device(batch)
        with self.autocast():  # through self.model, so that DDP synchronises the gradients
            loss, parts = self.model(x, x_mark, y=y[:, -self.args.pred_len :], stage=stage)
        return loss, parts, None

    # ---- training --------------------------------------------------------------------------
    def train(self, setting: str):
        train_data, train_loader = self._get_data("train")
        self.use_data(train_data)
        _, vali_loader = self._get_data("val")
        model = self.unwrapped_model()
        resume = self._resume_state(setting)
        if resume is None or resume["stage"] == "warmup":
            if self.args.stage1_epochs > 0:
                self._stage1(setting, train_loader, vali_loader, resume)
            self.stage1_head = copy.deepcopy(model.backbone.projection)
            if model.marginal != "none":
                self._fit_marginal(train_data)
            resume = None
        if self.args.stage2_epochs > 0:
            self._stage2(setting, train_loader, vali_loader, resume)
        else:
            self._save(self.checkpoint_path(setting), stage="warmup", epoch=0, best_score=None)
        self.load_checkpoint(self.checkpoint_path(setting))
        return self.model

    def _resume_state(self, setting: str) -> dict | None:
        """With --resume, the training state of the last finished epoch (weights loaded)."""
        path = self.checkpoint_path(setting, LAST)
        if not self.args.resume:
            return None
        if not os.path.exists(path):
            log.info("--resume: no %s yet, starting from scratch", path)
            return None
        state = self.load_checkpoint(path)
        log.info("Resuming stage %s after epoch %d", state["stage"], state["epoch"])
        return state

    def _stage1(self, setting, train_loader, vali_loader, resume) -> None:
        backbone = self.unwrapped_model().backbone
        self.unwrapped_model().denoiser.requires_grad_(False)  # not used before stage 2
        self.wrap_ddp()
        optimizer = torch.optim.AdamW(
            backbone.parameters(), lr=self.args.stage1_lr, weight_decay=self.args.weight_decay
        )
        path = self.checkpoint_path(setting, "checkpoint_stage1.pth")
        loaders = (train_loader, vali_loader)
        self._fit(setting, "warmup", self.args.stage1_epochs, optimizer, loaders, path, resume)
        self.load_checkpoint(path)

    def _stage2(self, setting, train_loader, vali_loader, resume) -> None:
        model = self.unwrapped_model()
        for module in (model.backbone.enc_embedding, model.backbone.encoder):
            module.requires_grad_(False)  # the baselines share this encoder's z
        model.denoiser.requires_grad_(True)
        self.wrap_ddp()
        groups = [
            {"params": model.backbone.projection.parameters(), "lr": self.args.projection_lr},
            {"params": model.denoiser.parameters(), "lr": self.args.stage2_lr},
        ]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.args.weight_decay)
        if self.args.ema_decay > 0:
            self.ema = AveragedModel(
                model.denoiser, multi_avg_fn=get_ema_multi_avg_fn(self.args.ema_decay)
            )
        path = self.checkpoint_path(setting)
        loaders = (train_loader, vali_loader)
        self._fit(setting, "joint", self.args.stage2_epochs, optimizer, loaders, path, resume)

    def _fit(self, setting, stage, epochs, optimizer, loaders, path, resume=None) -> None:
        """Epoch loop of one stage: cosine annealing, early stopping, best checkpoint kept.

        After every epoch the whole training state goes to ``checkpoint_last.pth``, so that
        --resume continues exactly where an interrupted run would have gone on.
        """
        train_loader, vali_loader = loaders
        scheduler = CosineAnnealingLR(optimizer, T_max=epochs)
        scaler = self.grad_scaler()
        stopper = EarlyStopping(patience=self.args.patience)
        parts = {
            "optimizer": optimizer,
            "scheduler": scheduler,
            "scaler": scaler,
            "stopper": stopper,
        }
        first, finished = 1, False
        if resume is not None and resume["stage"] == stage:
            self._restore(resume, parts)
            first, finished = resume["epoch"] + 1, resume["finished"]
        after_step = self._update_ema if (stage == "joint" and self.ema is not None) else None
        for epoch in progress(range(first, epochs + 1) if not finished else [], desc=stage):
            start = time.time()
            train_loss = self._train_epoch(
                train_loader, optimizer, scaler, stage, epoch, after_step=after_step
            )
            with self._ema_weights():
                vali = self._validation_score(vali_loader, stage)
            log.info(
                "Stage %s epoch %d (%.1fs) | train loss %.6f | vali %s %.6f",
                stage, epoch, time.time() - start, train_loss,
                "mse" if stage == "warmup" else "diffusion loss", vali,
            )  # fmt: skip
            if stopper.step(vali):
                self._save(path, stage=stage, epoch=epoch, best_score=vali)
            scheduler.step()
            done = stopper.early_stop or epoch == epochs
            self._save_last(setting, stage, epoch, done, parts)
            if stopper.early_stop:
                log.info("Early stopping in stage %s after epoch %d", stage, epoch)
                break

    def _save_last(self, setting, stage, epoch, finished, parts) -> None:
        states = {name: part.state_dict() for name, part in parts.items()}
        self.save_checkpoint(
            self.checkpoint_path(setting, LAST),
            stage=stage,
            epoch=epoch,
            finished=finished,
            training={**states, "ema": self.ema.state_dict() if self.ema else None},
            rng=rng_state(),
            stage1_head=self.stage1_head.state_dict(),
            data=self.data_meta,
        )

    def _restore(self, resume: dict, parts: dict) -> None:
        for name, part in parts.items():
            part.load_state_dict(resume["training"][name])
        if self.ema is not None and resume["training"]["ema"] is not None:
            self.ema.load_state_dict(resume["training"]["ema"])
        set_rng_state(resume["rng"])

    def _update_ema(self) -> None:
        self.ema.update_parameters(self.unwrapped_model().denoiser)

    @contextmanager
    def _ema_weights(self):
        """Evaluate (and save) with the EMA denoiser weights when EMA is on."""
        if self.ema is None:
            yield
            return
        denoiser = self.unwrapped_model().denoiser
        backup = copy.deepcopy(denoiser.state_dict())
        denoiser.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            denoiser.load_state_dict(backup)

    @torch.no_grad()
    def _validation_score(self, loader, stage: str) -> float:
        """warmup: validation MSE. joint: validation diffusion loss with a fixed seed, each
        window and variate weighted by its instance variance."""
        if stage == "warmup":
            return self._eval_loss(loader, stage)
        self.model.eval()
        model = self.unwrapped_model()
        generator = torch.Generator(device=self.device).manual_seed(self.args.seed)
        total, count = 0.0, 0
        for batch in loader:
            x, y, x_mark, _ = self._to_device(batch)
            y = y[:, -self.args.pred_len :]
            with self.autocast():
                y_det, z, norm = model.backbone_forward(x, x_mark)
                # weighted by the windows' variance: the error in the data's units, so that the
                # windows with the smallest σ (flat lookbacks, floored) do not swamp the score
                sigma = diffusion_normalizer(norm).stdev  # (B, 1, N), as the target is scaled
                weight = sigma.permute(0, 2, 1).float() ** 2  # (B, N, 1)
                loss = model.diffusion_loss(
                    y, y_det, z, norm, generator=generator, window_weight=weight
                )
            total, count = total + loss.item() * len(x), count + len(x)
        return total / max(count, 1)

    @torch.no_grad()
    def _fit_baselines(self, loader) -> dict[str, Tensor]:
        """The baselines' parameters from the stage-1 backbone's residuals on ``loader``."""
        self.model.eval()
        model = self.unwrapped_model()
        residuals, scales = [], []
        for batch in loader:
            x, y, x_mark, _ = self._to_device(batch)
            _, z, norm = model.backbone_forward(x, x_mark)
            point = self._stage1_point(z, norm)
            residuals.append((y[:, -self.args.pred_len :] - point).float().cpu())
            scales.append(norm.stdev.float().cpu())
        return baselines.fit(torch.cat(residuals), torch.cat(scales))

    def _stage1_point(self, z: Tensor, norm) -> Tensor:
        """The stage-1 backbone's point forecast (B, H, N) from the frozen encoder's z: the
        forecast every baseline is built on (stage 2 goes on training the model's own head)."""
        self.stage1_head.to(self.device).eval()
        return norm.denormalize(self.stage1_head(z).permute(0, 2, 1))

    @torch.no_grad()
    def _fit_marginal(self, data, windows: int = 8192) -> None:
        """The model's marginal table, from the stage-1 backbone's residuals on up to
        ``windows`` evenly spaced training windows."""
        model = self.unwrapped_model().eval()
        picks = np.unique(np.linspace(0, len(data) - 1, min(windows, len(data))).round())
        subset = torch.utils.data.Subset(data, picks.astype(int).tolist())
        targets = []
        for batch in torch.utils.data.DataLoader(subset, batch_size=256):
            x, y, x_mark, _ = self._to_device(batch)
            y_det, _, norm = model.backbone_forward(x, x_mark)
            targets.append(model.normalised_target(y[:, -self.args.pred_len :], y_det, norm))
        model.fit_marginal(torch.cat(targets).cpu())

    # ---- checkpoints -------------------------------------------------------------------------
    def _save(self, path: str, **meta) -> None:
        with self._ema_weights():
            self.save_checkpoint(
                path,
                stage1_head=self.stage1_head.state_dict(),
                calibration=self.calibration,
                data=self.data_meta,
                **meta,
            )

    def load_checkpoint(self, path: str):
        state = super().load_checkpoint(path)
        if state.get("stage1_head") is not None:
            self.stage1_head.load_state_dict(state["stage1_head"])
        self.calibration = dict(state.get("calibration") or {})
        if self.data_meta is None and state.get("data") is not None:
            self.data_meta = state["data"]
        if self.scaler is None and self.data_meta is not None:
            meta = self.data_meta
            self.scaler = (np.asarray(meta["mean"], float), np.asarray(meta["scale"], float))
        return state

    # ---- the data a checkpoint carries ------------------------------------------------------
    def use_data(self, data) -> None:
        """Take the scaler (and, where none is known yet, the description that checkpoints
        carry) from a dataset of this run's CSV; every split has the training rows' scaler."""
        self.scaler = (np.asarray(data.scaler.mean_, float), np.asarray(data.scaler.scale_, float))
        if self.data_meta is None:
            self.data_meta = data_meta(data, self.args)

    def _store_in_checkpoint(self, path: str, **entries) -> None:
        """Add or replace top-level entries of an existing checkpoint (rank 0, atomically)."""
        if self.is_main and os.path.isfile(path):
            state = read_checkpoint(path)
            state.update(entries)
            atomic_save(state, path)
        distributed.barrier()

    # ---- sampling, shared by calibration, evaluation and the future forecast --------------------
    def sample_chunk(self) -> int:
        """Most trajectories denoised at once: --sample_chunk, or what fits a share of the free
        memory (per trajectory, about twelve state-sized tensors and eight feature maps per
        U-Net level in float32). On a CPU chunks of ~128 MiB of activations run fastest."""
        if self.args.sample_chunk:
            return self.args.sample_chunk
        unet = self.unwrapped_model().denoiser
        H = self.args.pred_len
        L = H + (-H % unet.multiple)
        floats = 12 * (unet.n_vars + unet.extra_in_channels) * L
        floats += sum(8 * c * max(1, L >> level) for level, c in enumerate(unet.channels))
        budget = free_memory_bytes(self.device) // (2 if self.device.type == "cuda" else 4)
        if self.device.type != "cuda":
            budget = min(budget, 1 << 27)
        return max(1, int(budget // (4 * floats)))

    def normalised_bounds(self) -> tuple[Tensor | None, Tensor | None]:
        """--bounds of the scored variates in normalised units, (bound − mean_) / scale_ per
        variate → (low (N',) or None, high (N',) or None), rounded inwards to float32 so that
        the samples map back inside the bounds; (None, None) without bounds."""
        bounds = getattr(self.args, "bounds", None)
        if not bounds:
            return None, None
        if self.scaler is None:
            from data_provider.data_factory import build_dataset

            self.use_data(build_dataset(self.args, "train"))
        f = -1 if self.args.features == "MS" else 0
        mean, scale = self.scaler[0][f:], self.scaler[1][f:]
        out = []
        for bound, inward in zip(bounds, (np.inf, -np.inf)):
            if bound is None:
                out.append(None)
                continue
            exact = (bound - mean) / scale  # float64
            near = exact.astype(np.float32)
            outside = near > exact if inward < 0 else near < exact
            near = np.where(outside, np.nextafter(near, np.float32(inward)), near)
            out.append(torch.from_numpy(near.astype(np.float32)))
        return out[0], out[1]

    @torch.no_grad()
    def _forecast_batch(self, batch, index: int, with_baselines: bool = True, bounded: bool = True):
        """→ ({method: (samples (S, B, H, N'), point forecast (B, H, N') or None for the sample
        mean)}, truth (B, H, N'), seconds of sampling).

        The model's ensemble is spread-calibrated when factors are set, then clipped into
        --bounds (``bounded``), as are the baselines' ensembles and point forecasts. The noise
        of batch ``index`` comes from its own seeded generator, so a batch gets the same
        samples whatever ran before it (re-evaluation, sharding over ranks).
        """
        args = self.args
        model = self.unwrapped_model().eval()
        x, y, x_mark, _ = self._to_device(batch)
        start = time.perf_counter()
        y_det, z, norm = model.backbone_forward(x, x_mark)
        generator = torch.Generator(device=self.device).manual_seed(args.seed * 1_000_003 + index)
        samples = model.sample(
            y_det, z, norm, n_samples=args.n_samples, sampler=args.sampler,
            steps=args.sampling_steps, eta=args.eta, spacing=args.timestep_spacing,
            generator=generator, sample_chunk=self.sample_chunk(),
            autocast_dtype=self.amp_dtype(), center=bool(args.center_samples),
        )  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        f = -1 if args.features == "MS" else 0  # the scored variates
        samples = samples[..., f:]
        if self.spread_scale is not None:
            apply_spread(samples, self.spread_scale)
        low, high = self.normalised_bounds() if bounded else (None, None)
        clip_samples(samples, low, high)
        methods = {args.model: (samples, None)}
        if with_baselines:
            point = self._stage1_point(z, norm)[..., f:]  # (B, H, N')
            scale = norm.stdev[..., f:]  # (B, 1, N')
            # the baselines' own stream: their draws do not depend on the model's sampler
            seed = (args.seed * 1_000_003 + index) ^ 0x5EED
            stream = torch.Generator(device=self.device).manual_seed(seed)
            fitted = baselines.ensembles(self.baseline_fit, point, scale, args.n_samples, f, stream)
            if low is not None or high is not None:  # the same bounds: a fair comparison
                fitted = {
                    name: (draws.clamp(*_like(draws, low, high)),
                           None if p is None else p.clamp(*_like(p, low, high)))
                    for name, (draws, p) in fitted.items()
                }  # fmt: skip
            methods.update(fitted)
        return methods, y[:, -args.pred_len :, f:], seconds

    # ---- spread calibration ---------------------------------------------------------------------
    def prepare_sampling(self, setting: str) -> None:
        """Spread factors for the current sampling setting: from the checkpoint when they were
        fitted before, else fitted now on validation windows and saved into the checkpoint."""
        self.spread_scale = None
        if self.args.calibrate_spread == "none":
            return
        key = calibration_key(self.args)
        if key not in self.calibration:
            self.calibration[key] = self._fit_spread().tolist()
            self._store_in_checkpoint(self.checkpoint_path(setting), calibration=self.calibration)
        self.use_stored_spread()

    def use_stored_spread(self) -> None:
        """Set the spread factors of the current sampling setting from those fitted before
        (none with --calibrate_spread none); CheckpointError where they were never fitted."""
        self.spread_scale = None
        if self.args.calibrate_spread == "none":
            return
        key = calibration_key(self.args)
        if key not in self.calibration:
            raise CheckpointError(
                f"the checkpoint holds no spread factors for this sampling setting ({key}); "
                "they are fitted on validation windows the first time a setting is evaluated"
            )
        self.spread_scale = torch.tensor(self.calibration[key], dtype=torch.float32)
        log.info(
            "Spread factors (%s): %s", self.args.calibrate_spread,
            np.array2string(self.spread_scale.numpy(), precision=3),
        )  # fmt: skip

    @torch.no_grad()
    def _fit_spread(self) -> Tensor:
        """The factor that minimises the ensemble CRPS of mean + s·(sample − mean) on up to
        --calib_windows evenly spaced validation windows, sampled exactly as the test windows
        will be; one for all variates (``global``) or one per variate (``variate``). The
        ensemble CRPS is convex in s, so a grid suffices."""
        args = self.args
        data, _ = self._get_data("val")
        count = min(args.calib_windows, len(data))
        picks = np.unique(np.linspace(0, len(data) - 1, count).round().astype(int))
        subset = torch.utils.data.Subset(data, picks.tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, shuffle=False)
        low, high = self.normalised_bounds()  # scored as they will be: rescaled, then bounded
        total = 0.0  # (len(SCALES), N') CRPS sums
        for index, batch in enumerate(progress(loader, desc="calibrating spread")):
            methods, true, _ = self._forecast_batch(
                batch, -1 - index, with_baselines=False, bounded=False
            )
            samples = methods[args.model][0].float().cpu()
            total = total + crps_by_spread_scale(samples, true.float().cpu(), SCALES, low, high)
        scale, best = best_scale(total, args.calibrate_spread)
        if bool(((best == 0) | (best == len(SCALES) - 1)).any()):
            log.warning(
                "Spread calibration: a factor reached the edge of its grid (%.3g … %.3g); the "
                "denoiser's spread is far off there", SCALES[0], SCALES[-1],
            )  # fmt: skip
        n_values = len(picks) * args.pred_len * total.shape[1]
        log.info(
            "Spread calibration on %d validation windows: CRPS %.4f (%.4f unscaled)",
            len(picks), float(total.gather(0, best[None]).sum() / n_values),
            float(total[UNIT].sum() / n_values),
        )  # fmt: skip
        return scale

    # ---- evaluation -----------------------------------------------------------------------------
    def test(self, setting: str, test: int = 0) -> dict:
        args = self.args
        data, loader = self._get_data(args.eval_split)
        if test:
            self.load_checkpoint(self.checkpoint_path(setting))
        had_meta = self.data_meta is not None
        self.use_data(data)
        if not had_meta:  # a checkpoint from before they carried their data: add it
            self._store_in_checkpoint(self.checkpoint_path(setting), data=self.data_meta)
        self.prepare_sampling(setting)
        # fitted at every evaluation (one backbone pass over validation): always today's recipe
        self.baseline_fit = self._fit_baselines(self._get_data("val")[1])
        self._store_in_checkpoint(self.checkpoint_path(setting), baseline_fit=self.baseline_fit)
        evaluation = Evaluation(
            args, data.scaler, len(data), self.results_dir(setting), args.model,
            baselines.NAMES, self.is_main,
        )  # fmt: skip
        rank, world = distributed.rank(), distributed.world_size()
        for index, batch in enumerate(progress(loader, desc="sampling")):
            if index % world == rank:  # DDP: each rank its own batches, every batch once
                methods, true, seconds = self._forecast_batch(batch, index)
                evaluation.add_batch(index, index * args.batch_size, methods, true, seconds)
        metrics = evaluation.finish(
            sampler=args.sampler, sampling_steps=args.sampling_steps, n_samples=args.n_samples,
            eta=args.eta, timestep_spacing=args.timestep_spacing,
            spread_scale=None if self.spread_scale is None else self.spread_scale.tolist(),
            eval_split=args.eval_split, data_path=args.data_path, pred_len=args.pred_len,
            world_size=world, baseline_val_crps=self._baseline_val_crps(),
            bounds=getattr(args, "bounds", None),
        )  # fmt: skip
        if self.is_main:
            self._write_log(setting, metrics)
            self._plot_test(setting, data, metrics)
        return metrics

    def _baseline_val_crps(self) -> dict[str, float] | None:
        scores = self.baseline_fit.get("val_crps")
        return None if scores is None else dict(zip(baselines.NAMES, scores.tolist()))

    def _plot_test(self, setting: str, data, metrics: dict) -> None:
        """Fan charts, reliability diagram, CRPS per step and per variate → --test_results."""
        from utils.plots import plot_run

        f = -1 if self.args.features == "MS" else 0
        windows = np.lib.stride_tricks.sliding_window_view(
            data.data_x[:, f:], self.args.seq_len, axis=0
        )  # (rows - L + 1, N', L), a view: nothing is copied
        history = windows[: len(data)].transpose(0, 2, 1)  # (W, L, N')
        names = data.columns[f:] if f else data.columns
        folder = os.path.join(self.args.test_results, setting)
        paths = plot_run(self.results_dir(setting), folder, metrics, names, history)
        log.info("Figures: %s", ", ".join(paths))

    def _write_log(self, setting: str, m: dict) -> None:
        def fields(r: dict, keys: tuple[str, ...]) -> str:
            return ", ".join(f"{k}:{r[k]}" for k in keys if k in r)

        prob = PROB_METRICS
        lines = [
            f"{setting}  ",
            fields(m, ("mse", "mae", "rmse")),
            fields(m, prob),
            *(
                f"baseline {name}: " + fields(b, ("mse", "mae", *prob))
                for name, b in m["baselines"].items()
            ),  # fmt: skip
            f"sampler:{m['sampler']}, steps:{m['sampling_steps']}, samples:{m['n_samples']}, "
            f"windows:{m['n_windows']}, split:{m['eval_split']}, "
            f"spread_scale:{m['spread_scale']}, seconds_sampling:{m['seconds_sampling']:.1f}"
            + (f", bounds:{bounds_text(m['bounds'])}" if m.get("bounds") else ""),
        ]
        with open(self.args.result_file, "a") as f:
            f.write("\n".join(lines) + "\n\n")
        log.info(format_table(m))

    # ---- the real future ------------------------------------------------------------------------
    @torch.no_grad()
    def forecast_future(
        self, values: np.ndarray, dates: pd.DatetimeIndex
    ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        """The one path of every future forecast (``--do_predict`` and ``forecaster.py``).

        values (T, N): T ≥ seq_len rows of the model's columns, already scaled with the
        training scaler; dates (T,) their timestamps. → (samples (S, H, N') of the scored
        variates in original units, the H dates after the last row, continuing the series'
        frequency). The model samples from the last ``seq_len`` rows through
        :meth:`_forecast_batch` with the current spread factors (``self.spread_scale``) and
        --bounds, seeded by --seed; ``self.scaler`` maps the samples back.
        """
        args = self.args
        if len(values) < args.seq_len or len(dates) != len(values):
            raise ValueError(
                f"forecast_future needs at least seq_len = {args.seq_len} rows with one date "
                f"each, got {len(values)} rows and {len(dates)} dates"
            )
        dates = pd.DatetimeIndex(dates)
        x = np.asarray(values[-args.seq_len :], dtype=np.float32)
        marks = time_marks(args, dates[-args.seq_len :]).astype(np.float32)
        batch = (torch.from_numpy(x)[None], torch.zeros(1, args.pred_len, x.shape[1]),
                 torch.from_numpy(marks)[None], torch.zeros(1))  # fmt: skip
        methods, _, _ = self._forecast_batch(batch, -(1 << 20), with_baselines=False)
        f = -1 if args.features == "MS" else 0
        normalised = methods[args.model][0][:, 0].cpu().numpy()  # (S, H, N') float32
        samples = normalised.astype(np.float64) * self.scaler[1][f:] + self.scaler[0][f:]
        bounds = getattr(args, "bounds", None)
        if bounds:  # a clipped sample is the bound itself, not its float32 neighbour
            low, high = self.normalised_bounds()
            if low is not None:
                samples[normalised <= low.numpy()] = bounds[0]
            if high is not None:
                samples[normalised >= high.numpy()] = bounds[1]
            samples = np.clip(samples, *bounds)
        return samples, future_dates(dates, args.pred_len)

    @torch.no_grad()
    def predict_future(self, setting: str) -> str | None:
        """Forecast the ``pred_len`` steps after the CSV's last row → ``forecast.csv`` (one row
        per (date, variate), original units: mean and quantiles) and fan charts."""
        if not self.is_main:
            return None
        args = self.args
        data, _ = self._get_data("test")
        self.use_data(data)
        if self.spread_scale is None:
            self.prepare_sampling(setting)
        samples, dates = self.forecast_future(data.full_data, data.all_dates)
        f = -1 if args.features == "MS" else 0
        names = list(data.columns[f:] if f else data.columns)
        table = forecast_table(samples, dates, names)
        path = os.path.join(self.results_dir(setting), "forecast.csv")
        table.to_csv(path, index=False)
        history = data.inverse_transform(data.full_data[-args.seq_len :])[:, f:]
        figures = os.path.join(args.test_results, setting)
        plot_forecast(figures, table, history, data.all_dates[-args.seq_len :], names)
        log.info("Forecast for %s … %s written to %s", dates[0], dates[-1], path)
        return path


def _like(x: Tensor, *bounds: Tensor | None) -> list[Tensor | None]:
    """bounds on x's device and in x's dtype (None stays None)."""
    return [None if b is None else b.to(device=x.device, dtype=x.dtype) for b in bounds]


def data_meta(data, args) -> dict:
    """What a checkpoint keeps about its data, so that it forecasts without the CSV: the
    model's columns in order (target last for custom), the training rows' scaler (mean_ and
    scale_ per column), the time-feature --freq and the dates' own frequency (None if
    irregular). Plain lists and strings: ``torch.load(weights_only=True)`` reads them."""
    dates = data.all_dates[-min(len(data.all_dates), 100) :]
    freq = pd.DatetimeIndex(dates.values, freq="infer").freq if len(dates) >= 3 else None
    return {
        "columns": [str(c) for c in data.columns],
        "mean": [float(v) for v in data.scaler.mean_],
        "scale": [float(v) for v in data.scaler.scale_],
        "freq": args.freq,
        "date_freq": None if freq is None else freq.freqstr,
        "target": args.target,
        "last_date": str(data.all_dates[-1]),
    }
