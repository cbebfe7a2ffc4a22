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
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from exp import baselines
from exp.calibration import (
    SCALES,
    UNIT,
    apply_spread,
    best_scale,
    calibration_key,
    crps_by_spread_scale,
)
from exp.evaluation import Evaluation, format_table
from exp.exp_basic import Exp_Basic, TrainingLoopMixin, read_checkpoint
from exp.forecast import forecast_table, plot_forecast
from models.iTransformerDiffusion import diffusion_normalizer
from utils import distributed
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

    # ---- one batch, shared by training and validation ------------------------------------
    def _batch_loss(self, batch, stage: str):
        x, y, x_mark, _ = self._to_device(batch)
        with self.autocast():  # through self.model, so that DDP synchronises the gradients
            loss, parts = self.model(x, x_mark, y=y[:, -self.args.pred_len :], stage=stage)
        return loss, parts, None

    # ---- training --------------------------------------------------------------------------
    def train(self, setting: str):
        _, train_loader = self._get_data("train")
        _, vali_loader = self._get_data("val")
        model = self.unwrapped_model()
        resume = self._resume_state(setting)
        if resume is None or resume["stage"] == "warmup":
            if self.args.stage1_epochs > 0:
                self._stage1(setting, train_loader, vali_loader, resume)
            self.stage1_head = copy.deepcopy(model.backbone.projection)
            self.baseline_fit = self._fit_baselines(vali_loader)
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
            baseline_fit=self.baseline_fit,
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
        """The baselines' parameters from the stage-1 backbone's validation residuals."""
        self.model.eval()
        model = self.unwrapped_model()
        residuals, scales = [], []
        for batch in loader:
            x, y, x_mark, _ = self._to_device(batch)
            y_det, _, norm = model.backbone_forward(x, x_mark)
            residuals.append((y[:, -self.args.pred_len :] - y_det.float()).cpu())
            scales.append(norm.stdev.float().cpu())
        return baselines.fit(torch.cat(residuals), torch.cat(scales))

    # ---- checkpoints -------------------------------------------------------------------------
    def _save(self, path: str, **meta) -> None:
        with self._ema_weights():
            self.save_checkpoint(
                path,
                stage1_head=self.stage1_head.state_dict(),
                baseline_fit=self.baseline_fit,
                calibration=self.calibration,
                **meta,
            )

    def load_checkpoint(self, path: str):
        state = super().load_checkpoint(path)
        if state.get("stage1_head") is not None:
            self.stage1_head.load_state_dict(state["stage1_head"])
        self.baseline_fit = state.get("baseline_fit")
        self.calibration = dict(state.get("calibration") or {})
        return state

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

    @torch.no_grad()
    def _forecast_batch(self, batch, index: int, with_baselines: bool = True):
        """→ ({method: (samples (S, B, H, N'), point forecast (B, H, N') or None for the sample
        mean)}, truth (B, H, N'), seconds of sampling).

        The model's ensemble is spread-calibrated when factors are set. The noise of batch
        ``index`` comes from its own seeded generator, so a batch gets the same samples
        whatever ran before it (re-evaluation, sharding over ranks).
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
            autocast_dtype=self._amp_dtype(), center=bool(args.center_samples),
        )  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        f = -1 if args.features == "MS" else 0  # the scored variates
        samples = samples[..., f:]
        if self.spread_scale is not None:
            apply_spread(samples, self.spread_scale)
        methods = {args.model: (samples, None)}
        if with_baselines:
            self.stage1_head.to(self.device).eval()
            point = norm.denormalize(self.stage1_head(z).permute(0, 2, 1))[..., f:]  # (B, H, N')
            scale = norm.stdev[..., f:]  # (B, 1, N')
            # the baselines' own stream: their draws do not depend on the model's sampler
            seed = (args.seed * 1_000_003 + index) ^ 0x5EED
            stream = torch.Generator(device=self.device).manual_seed(seed)
            methods.update(
                baselines.ensembles(self.baseline_fit, point, scale, args.n_samples, f, stream)
            )
        return methods, y[:, -args.pred_len :, f:], seconds

    def _amp_dtype(self):
        if not self.args.use_amp:
            return None
        return torch.bfloat16 if self.args.amp_dtype == "bf16" else torch.float16

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
            self._store_calibration(self.checkpoint_path(setting))
        self.spread_scale = torch.tensor(self.calibration[key], dtype=torch.float32)
        log.info(
            "Spread factors (%s): %s", self.args.calibrate_spread,
            np.array2string(self.spread_scale.numpy(), precision=3),
        )  # fmt: skip

    def _store_calibration(self, path: str) -> None:
        if self.is_main and os.path.isfile(path):
            state = read_checkpoint(path)
            state["calibration"] = self.calibration
            atomic_save(state, path)
        distributed.barrier()

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
        total = 0.0  # (len(SCALES), N') CRPS sums
        for index, batch in enumerate(progress(loader, desc="calibrating spread")):
            methods, true, _ = self._forecast_batch(batch, -1 - index, with_baselines=False)
            samples = methods[args.model][0].float().cpu()
            total = total + crps_by_spread_scale(samples, true.float().cpu(), SCALES)
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
        if self.baseline_fit is None:
            raise RuntimeError("the checkpoint has no baseline fit; train stage 1 first")
        self.prepare_sampling(setting)
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

        prob = ("crps", "crps_fair", "crps_norm", "crps_sum", "coverage_50", "coverage_90",
                "sharpness_90", "energy_score", "variogram_score")  # fmt: skip
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
            f"spread_scale:{m['spread_scale']}, seconds_sampling:{m['seconds_sampling']:.1f}",
        ]
        with open(self.args.result_file, "a") as f:
            f.write("\n".join(lines) + "\n\n")
        log.info(format_table(m))

    # ---- the real future ------------------------------------------------------------------------
    @torch.no_grad()
    def predict_future(self, setting: str) -> str | None:
        """Forecast the ``pred_len`` steps after the CSV's last row → ``forecast.csv`` (one row
        per (date, variate), original units: mean and quantiles) and fan charts."""
        if not self.is_main:
            return None
        args = self.args
        data, _ = self._get_data("test")
        x, x_mark, dates = data.future_input()
        batch = (torch.from_numpy(x)[None], torch.zeros(1, args.pred_len, x.shape[1]),
                 torch.from_numpy(x_mark)[None], torch.zeros(1))  # fmt: skip
        if self.spread_scale is None:
            self.prepare_sampling(setting)
        methods, _, _ = self._forecast_batch(batch, -(1 << 20), with_baselines=False)
        f = -1 if args.features == "MS" else 0
        samples = methods[args.model][0][:, 0].double().cpu().numpy()  # (S, H, N')
        samples = samples * data.scaler.scale_[f:] + data.scaler.mean_[f:]
        names = list(data.columns[f:] if f else data.columns)
        table = forecast_table(samples, dates, names)
        path = os.path.join(self.results_dir(setting), "forecast.csv")
        table.to_csv(path, index=False)
        history = data.inverse_transform(data.full_data[-args.seq_len :])[:, f:]
        figures = os.path.join(args.test_results, setting)
        plot_forecast(figures, table, history, data.all_dates[-args.seq_len :], names)
        log.info("Forecast for %s … %s written to %s", dates[0], dates[-1], path)
        return path
