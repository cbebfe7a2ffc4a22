"""Probabilistic forecasting with a diffusion head on an iTransformer (``diffusion_forecast``).

Stage 1 (warm-up) trains the backbone on MSE with early stopping on validation MSE. Stage 2
freezes the embedding and encoder and trains the head (small lr) and the denoiser on
λ·MSE + (1−λ)·diffusion loss; its checkpoint is chosen on the validation *diffusion* loss
(fixed seed, so epochs are comparable), never on point MSE. Testing draws ``--n_samples``
trajectories per window with any sampler and scores the whole test set with proper scores,
next to two baselines built from the stage-1 backbone: iTransformer as a point mass, and
iTransformer + Gaussian noise with σ per (horizon step, variate) from validation residuals.
"""

from __future__ import annotations

import copy
import json
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

from data_provider.data_factory import build_dataset
from exp.exp_basic import Exp_Basic, TrainingLoopMixin
from models.iTransformerDiffusion import diffusion_normalizer
from utils import distributed
from utils.metrics import ProbMetricAccumulator, metric, quantiles_from_sorted, sample_std
from utils.tools import EarlyStopping, progress, release_memory, rng_state, set_rng_state

log = logging.getLogger("tsdiff")

QUANTILES_SAVED = (0.05, 0.25, 0.5, 0.75, 0.95)
BASELINES = ("itransformer", "itransformer_gaussian")
LAST = "checkpoint_last.pth"  # the training state after the last finished epoch (--resume)


class Exp_Diffusion_Forecast(TrainingLoopMixin, Exp_Basic):
    supported_models = ("iTransformerDiffusion", "iTransformerDiffusionDirect")

    def __init__(self, args):
        super().__init__(args)
        if args.compile:
            self.unwrapped_model().compile_denoiser()
        self.ema: AveragedModel | None = None
        self.stage1_head: nn.Linear = copy.deepcopy(self.unwrapped_model().backbone.projection)
        self.baseline_sigma: Tensor | None = None  # (H, N) validation RMSE of the backbone
        self.spread_scale: Tensor | None = None  # (N',) from calibrate_spread() before testing

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
            self.baseline_sigma = self._validation_rmse(vali_loader)
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
        encoder = (model.backbone.enc_embedding, model.backbone.encoder)
        for module in encoder:
            module.requires_grad_(bool(self.args.finetune_encoder))
        model.denoiser.requires_grad_(True)
        if self.args.variate_weights == "val_mse":  # harder variates weigh more, mean 1
            per_variate = (self.baseline_sigma.float() ** 2).mean(0)  # (N,) validation MSE
            model.variate_weight = (per_variate / per_variate.mean()).to(self.device)
        self.wrap_ddp()
        groups = [
            {"params": model.backbone.projection.parameters(), "lr": self.args.projection_lr},
            {"params": model.denoiser.parameters(), "lr": self.args.stage2_lr},
        ]
        if self.args.finetune_encoder:
            params = [p for module in encoder for p in module.parameters()]
            groups.append({"params": params, "lr": self.args.projection_lr})
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
            baseline_sigma=self.baseline_sigma,
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
    def _validation_rmse(self, loader) -> Tensor:
        """σ (H, N) of the Gaussian baseline: RMSE of the backbone on validation windows."""
        self.model.eval()
        sq, count = 0.0, 0
        for batch in loader:
            x, y, x_mark, _ = self._to_device(batch)
            y_det, _, _ = self.unwrapped_model().backbone_forward(x, x_mark)
            sq = sq + ((y_det.float() - y[:, -self.args.pred_len :]) ** 2).sum(0)
            count += len(x)
        return (sq / count).sqrt().cpu()

    # ---- checkpoints -------------------------------------------------------------------------
    def _save(self, path: str, **meta) -> None:
        with self._ema_weights():
            self.save_checkpoint(
                path,
                stage1_head=self.stage1_head.state_dict(),
                baseline_sigma=self.baseline_sigma,
                **meta,
            )

    def load_checkpoint(self, path: str):
        state = super().load_checkpoint(path)
        if state.get("stage1_head") is not None:
            self.stage1_head.load_state_dict(state["stage1_head"])
        self.baseline_sigma = state.get("baseline_sigma")
        return state

    # ---- testing -----------------------------------------------------------------------------
    def test(self, setting: str, test: int = 0):
        test_data, test_loader = self._get_data(self.args.eval_split)
        if test:
            self.load_checkpoint(self.checkpoint_path(setting))
        if self.baseline_sigma is None:
            raise RuntimeError("the checkpoint has no baseline σ; train stage 1 first")
        self.calibrate_spread()
        evaluation = Evaluation(self, test_data, len(test_data), self.results_dir(setting))
        rank, world = distributed.rank(), distributed.world_size()
        for index, batch in enumerate(progress(test_loader, desc="sampling")):
            if index % world == rank:  # DDP: each rank its own batches, every batch once
                evaluation.add_batch(index, *self._forecast_batch(batch, index))
        metrics = evaluation.finish()
        if self.is_main:
            self._write_log(setting, metrics)
            self._plot_test(setting, test_data, metrics)
        return metrics

    def _plot_test(self, setting: str, test_data, metrics: dict) -> None:
        """Fan charts, reliability diagram, CRPS per step and per variate → --test_results."""
        from utils.plots import plot_run

        f = -1 if self.args.features == "MS" else 0
        windows = np.lib.stride_tricks.sliding_window_view(
            test_data.data_x[:, f:], self.args.seq_len, axis=0
        )  # (rows - L + 1, N', L), a view: nothing is copied
        history = windows[: len(test_data)].transpose(0, 2, 1)  # (W, L, N')
        names = test_data.columns[f:] if f else test_data.columns
        folder = os.path.join(self.args.test_results, setting)
        paths = plot_run(self.results_dir(setting), folder, metrics, names, history)
        log.info("Figures: %s", ", ".join(paths))

    @torch.no_grad()
    def predict_future(self, setting: str) -> str | None:
        """Forecast the ``pred_len`` steps after the CSV's last row → ``forecast.csv``.

        One row per (date, variate) in original units: mean, median and the 5/25/75/95%
        quantiles, from ``--n_samples`` samples of the trained model; plus a fan chart.
        """
        if not self.is_main:
            return None
        args = self.args
        data = build_dataset(args, "test")
        x, x_mark, dates = data.future_input()
        x = torch.from_numpy(x)[None].to(self.device)  # (1, L, N)
        x_mark = torch.from_numpy(x_mark)[None].to(self.device)  # (1, L, M)
        model = self.unwrapped_model().eval()
        self.calibrate_spread()
        generator = torch.Generator(device=self.device).manual_seed(args.seed)
        with torch.no_grad():
            y_det, z, norm = model.backbone_forward(x, x_mark)
            samples = self._sample(y_det, z, norm, generator)  # (S, 1, H, N)
        f = -1 if args.features == "MS" else 0
        samples = data.inverse_transform(samples[:, 0, :, f:].double().cpu().numpy())  # (S, H, N')
        names = data.columns[f:] if f else data.columns
        table = forecast_table(samples, dates, names)
        folder = self.results_dir(setting)
        path = os.path.join(folder, "forecast.csv")
        table.to_csv(path, index=False)
        history = data.inverse_transform(data.full_data[-args.seq_len :, f:])
        self._plot_future(setting, history, data.all_dates[-args.seq_len :], table, names)
        log.info("Forecast for %s … %s written to %s", dates[0], dates[-1], path)
        return path

    def _plot_future(self, setting, history, history_dates, table, names) -> None:
        from utils.plots import fan_chart

        folder = os.path.join(self.args.test_results, setting)
        os.makedirs(folder, exist_ok=True)
        for i, name in enumerate(names[-3:]):  # the target is last for custom data
            rows = table[table["variate"] == name]
            quantiles = {
                q: rows["median" if q == 0.5 else f"q{round(q * 100):02d}"].to_numpy()
                for q in QUANTILES_SAVED
            }
            fan_chart(
                os.path.join(folder, f"forecast_{i}_{_safe(name)}.png"),
                history[:, len(names) - len(names[-3:]) + i],
                None,
                quantiles,
                title=f"{name}: forecast of the next {len(rows)} steps (median, 50% and 90% bands)",
                x_history=history_dates,
                x_future=pd.DatetimeIndex(rows["date"]),
                ylabel=f"{name} (original units)",
            )

    # ---- spread calibration --------------------------------------------------------------------
    # 0.135 … 7.39 2.5% apart, then on to 54.6 10% apart (collapsed ensembles need it)
    SCALES = np.exp(np.concatenate([np.arange(-80, 81) * 0.025, 2 + np.arange(1, 21) * 0.1]))
    UNIT = 80  # SCALES[UNIT] == 1

    @torch.no_grad()
    def calibrate_spread(self) -> Tensor | None:
        """Fit the spread of the samples around their mean on validation data.

        Up to --calib_windows validation windows (evenly spaced over the split) are sampled
        exactly as the test windows will be (same sampler, steps and samples). For each scale
        s in SCALES the ensemble CRPS of mean + s·(sample − mean) is computed in closed form,
        and the minimiser is kept: one s for all variates (``global``) or one per variate
        (``variate``, the default: the denoiser is too narrow on some variates and too wide on
        others). The mean, and so the MSE, does not change. This is the diffusion model's
        counterpart of the Gaussian baseline's σ per (step, variate), which also comes from
        validation residuals. The ensemble CRPS is convex in s, so a grid suffices.
        """
        self.spread_scale = None
        args = self.args
        if args.calibrate_spread == "none":
            return None
        data = build_dataset(args, "val")
        count = min(args.calib_windows, len(data))
        picks = np.unique(np.linspace(0, len(data) - 1, count).round().astype(int))
        subset = torch.utils.data.Subset(data, picks.tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, shuffle=False)
        total = 0.0  # (len(SCALES), N') CRPS sums
        for index, batch in enumerate(progress(loader, desc="calibrating spread")):
            samples, _, true, _ = self._forecast_batch(batch, -1 - index, scaled=False)
            total = total + crps_by_spread_scale(
                samples.float().cpu(), true.float().cpu(), self.SCALES
            )
        choice = (
            total.sum(1, keepdim=True).expand_as(total)
            if args.calibrate_spread == "global"
            else total
        )
        best = choice.argmin(0)  # (N',)
        self.spread_scale = torch.as_tensor(self.SCALES, dtype=torch.float32)[best]
        edge = (best == 0) | (best == len(self.SCALES) - 1)
        if bool(edge.any()):
            log.warning(
                "Spread calibration: %d variate(s) at the edge of the scale grid (%.3g … %.3g); "
                "the denoiser's spread is far off there", int(edge.sum()),
                self.SCALES[0], self.SCALES[-1],
            )  # fmt: skip
        n_values = len(picks) * args.pred_len * total.shape[1]
        crps = total.gather(0, best[None]).sum() / n_values
        log.info(
            "Spread calibration (%s) on %d validation windows: scale %s, CRPS %.4f (%.4f "
            "unscaled)", args.calibrate_spread, len(picks),
            np.array2string(self.spread_scale.numpy(), precision=3),
            float(crps), float(total[self.UNIT].sum() / n_values),
        )  # fmt: skip
        return self.spread_scale

    @torch.no_grad()
    def _forecast_batch(self, batch, index: int, scaled: bool = True):
        """→ samples (S, B, H, N'), baseline mean (B, H, N'), truth (B, H, N'), seconds.

        The noise of batch ``index`` comes from its own seeded generator, so a batch gets the
        same samples whatever ran before it (re-evaluation, sharding over ranks).
        """
        args = self.args
        model = self.unwrapped_model()
        model.eval()
        self.stage1_head.to(self.device).eval()
        x, y, x_mark, _ = self._to_device(batch)
        start = time.perf_counter()
        y_det, z, norm = model.backbone_forward(x, x_mark)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(args.seed * 1_000_003 + index)
        samples = self._sample(y_det, z, norm, generator, scaled)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        base = norm.denormalize(self.stage1_head(z).permute(0, 2, 1))  # (B, H, N)
        f = -1 if args.features == "MS" else 0
        true = y[:, -args.pred_len :, f:]
        return samples[..., f:], base[..., f:], true, seconds

    def _sample(self, y_det, z, norm, generator, scaled: bool = True) -> Tensor:
        """Samples (S, B, H, N) as the run's arguments ask, spread-calibrated if ``scaled``."""
        args = self.args
        samples = self.unwrapped_model().sample(
            y_det, z, norm, n_samples=args.n_samples, sampler=args.sampler,
            steps=args.sampling_steps, eta=args.eta, spacing=args.timestep_spacing,
            generator=generator, sample_chunk=args.sample_chunk, workers=args.sample_workers,
            autocast_dtype=self._amp_dtype(), center=bool(args.center_samples),
        )  # fmt: skip
        if scaled and self.spread_scale is not None:
            f = -1 if args.features == "MS" else 0  # the scale covers the scored variates
            part = samples[..., f:]
            scale = self.spread_scale.to(samples.device)
            with torch.inference_mode():  # in place: the samples can be large
                mean = part.mean(0)
                part.sub_(mean).mul_(scale).add_(mean)
        return samples

    def _amp_dtype(self):
        if not self.args.use_amp:
            return None
        return torch.bfloat16 if self.args.amp_dtype == "bf16" else torch.float16

    def _write_log(self, setting: str, m: dict) -> None:
        b = m["baselines"]
        lines = [
            f"{setting}  ",
            f"mse:{m['mse']}, mae:{m['mae']}, rmse:{m['rmse']}",
            f"crps:{m['crps']}, crps_fair:{m['crps_fair']}, crps_norm:{m['crps_norm']}, "
            f"crps_sum:{m['crps_sum']}, coverage_50:{m['coverage_50']}, "
            f"coverage_90:{m['coverage_90']}, sharpness_90:{m['sharpness_90']}",
            *(
                f"baseline {name}: mse:{b[name]['mse']}, mae:{b[name]['mae']}, "
                f"crps:{b[name]['crps']}, crps_norm:{b[name]['crps_norm']}, "
                f"coverage_50:{b[name]['coverage_50']}, coverage_90:{b[name]['coverage_90']}"
                for name in BASELINES
            ),
            f"sampler:{m['sampler']}, steps:{m['sampling_steps']}, samples:{m['n_samples']}, "
            f"windows:{m['n_windows']}, split:{m['eval_split']}, "
            f"spread_scale:{m['spread_scale']}, seconds_sampling:{m['seconds_sampling']:.1f}",
        ]
        with open(self.args.result_file, "a") as f:
            f.write("\n".join(lines) + "\n\n")
        log.info(format_table(m))


class Evaluation:
    """Streams test batches into metric accumulators and ``.npy`` files on disk.

    Metrics are computed in the normalised units of the data (TSLib's default); the normalised
    CRPS and CRPS-sum (ratios over Σ|y|, the ProbTS/GluonTS convention) in original units, as
    published tables do; ``--inverse`` adds every metric in original units.

    Each batch's contribution is kept apart and the contributions are merged in batch order at
    the end, so that batches sharded over DDP ranks give bit-for-bit the single-process numbers;
    every rank writes its own rows of the shared ``.npy`` files.
    """

    def __init__(self, exp: Exp_Diffusion_Forecast, dataset, n_windows: int, folder: str):
        self.exp, self.args, self.folder = exp, exp.args, folder
        f = -1 if self.args.features == "MS" else 0
        self.scale = torch.tensor(dataset.scaler.scale_[f:], dtype=torch.float64)
        self.shift = torch.tensor(dataset.scaler.mean_[f:], dtype=torch.float64)
        self.sigma = exp.baseline_sigma[:, f:].double()  # (H, N')
        self.n_windows = n_windows
        self.parts: list[tuple[int, int, float, dict]] = []  # (batch, first row, seconds, states)
        self.arrays = self._open_arrays(len(self.scale))

    def _open_arrays(self, n_out: int) -> dict[str, np.ndarray]:
        """float32 .npy files written batch by batch (memory stays flat for big data)."""
        window = (self.n_windows, self.args.pred_len, n_out)
        shapes = {"pred": window, "pred_std": window, "true": window,
                  "quantiles": (len(QUANTILES_SAVED), *window)}  # fmt: skip
        if self.args.save_samples:
            shapes["samples"] = (self.args.n_samples, *window)
        arrays = {}
        for mode in ("w+", "r+"):  # rank 0 creates the files, then every other rank opens them
            if (mode == "w+") == self.exp.is_main:
                for name, shape in shapes.items():
                    path = os.path.join(self.folder, f"{name}.npy")
                    arrays[name] = np.lib.format.open_memmap(path, mode, np.float32, shape)
            distributed.barrier()
        return arrays

    def add_batch(self, index: int, samples: Tensor, base: Tensor, true: Tensor, seconds: float):
        """Batch ``index``: samples (S, B, H, N'), base and true (B, H, N'), normalised units.

        Windows are scored a few at a time so that memory stays bounded for wide data.
        """
        S, B, H, N = samples.shape
        # ≤ 4M sample values (16 MiB) per chunk: the temporaries stay below glibc's mmap
        # threshold and are reused from the heap, not mapped and faulted in afresh each time
        step = max(1, (1 << 22) // (S * H * N))
        for start in range(0, B, step):
            rows = slice(start, start + step)
            states, chunk, chunk_sorted, chunk_true = self._score(
                samples[:, rows].float().cpu(), base[rows], true[rows]
            )
            self.parts.append((index, start, seconds if start == 0 else 0.0, states))
            offset = index * self.args.batch_size + start
            self._write(offset, chunk, chunk_sorted, chunk_true)
            del chunk, chunk_sorted
            release_memory()

    def _score(self, samples: Tensor, base: Tensor, true: Tensor) -> dict:
        base, true = base.double().cpu(), true.double().cpu()
        # one sort serves every metric: the affine map to original units keeps the order
        xs = samples.permute(1, 2, 3, 0).sort(dim=-1).values.permute(3, 0, 1, 2)  # (S, b, H, N)
        s, sh = self.scale, self.shift
        states = {"norm": self._accumulate(samples, xs, base, self.sigma, true)}
        s32, sh32 = s.float(), sh.float()
        states["orig"] = self._accumulate(
            samples * s32 + sh32, xs * s32 + sh32, base * s + sh, self.sigma * s, true * s + sh
        )
        return states, samples, xs, true

    def _accumulate(self, samples, sorted_samples, base, sigma, true) -> dict:
        acc = {name: ProbMetricAccumulator() for name in ("model", *BASELINES)}
        acc["model"].update_samples(samples, true, sorted_samples)
        acc["itransformer"].update_gaussian(base, torch.zeros_like(sigma), true)
        acc["itransformer_gaussian"].update_gaussian(base, sigma, true)
        return {name: a.state() for name, a in acc.items()}

    def _write(self, offset: int, samples: Tensor, sorted_samples: Tensor, true: Tensor) -> None:
        rows = slice(offset, offset + samples.shape[1])
        self.arrays["pred"][rows] = samples.mean(0).numpy()
        self.arrays["pred_std"][rows] = sample_std(samples).numpy()
        self.arrays["true"][rows] = true.numpy()
        q = quantiles_from_sorted(sorted_samples, QUANTILES_SAVED)  # (Q, B, H, N)
        self.arrays["quantiles"][:, rows] = q.numpy()
        if "samples" in self.arrays:
            self.arrays["samples"][:, rows] = samples.numpy()

    def _merged(self) -> tuple[dict, dict, float]:
        """Every rank's batch contributions, merged in batch order."""
        parts = sorted(
            p for rank_parts in distributed.gather_objects(self.parts) for p in rank_parts
        )
        totals = {u: {k: ProbMetricAccumulator() for k in ("model", *BASELINES)}
                  for u in ("norm", "orig")}  # fmt: skip
        for _, _, _, states in parts:
            for unit, accs in totals.items():
                for name, acc in accs.items():
                    acc.merge(states[unit][name])
        seconds = sum(sec for _, _, sec, _ in parts)
        return totals["norm"], totals["orig"], seconds

    def finish(self) -> dict:
        norm, orig_acc, seconds = self._merged()
        for array in self.arrays.values():
            array.flush()
        distributed.barrier()
        done = norm["model"].n_windows
        if done != self.n_windows:
            raise RuntimeError(f"evaluated {done} windows, expected {self.n_windows}")
        result = self._collect(norm)
        orig = self._collect(orig_acc)
        for key in ("crps_norm", "crps_sum"):  # ratios over Σ|y|: original units only
            result[key] = orig[key]
            for name in BASELINES:
                result["baselines"][name][key] = orig["baselines"][name][key]
        if self.args.inverse:
            result["original_units"] = orig
        pred, true = self.arrays["pred"], self.arrays["true"]
        mae, mse, rmse, mape, mspe = metric(np.asarray(pred), np.asarray(true))
        result.update(
            sampler=self.args.sampler,
            sampling_steps=self.args.sampling_steps,
            n_samples=self.args.n_samples,
            eta=self.args.eta,
            timestep_spacing=self.args.timestep_spacing,
            seconds_sampling=seconds,
            spread_scale=None if (s := self.exp.spread_scale) is None else s.tolist(),
            eval_split=self.args.eval_split,
            model=self.args.model,
            data_path=self.args.data_path,
            pred_len=self.args.pred_len,
            world_size=distributed.world_size(),
        )
        if self.exp.is_main:
            self._save(result, [mae, mse, rmse, mape, mspe])
        return result

    def _collect(self, acc) -> dict:
        result = acc["model"].compute()
        result["baselines"] = {name: acc[name].compute() for name in BASELINES}
        return result

    def _save(self, result: dict, point_metrics: list) -> None:
        np.save(os.path.join(self.folder, "metrics.npy"), np.array(point_metrics))
        keys = ("crps", "crps_fair", "crps_norm", "crps_sum", "coverage_50", "coverage_90",
                "sharpness_90")  # fmt: skip
        np.save(os.path.join(self.folder, "prob_metrics.npy"), np.array([result[k] for k in keys]))
        with open(os.path.join(self.folder, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)


def crps_by_spread_scale(samples: Tensor, true: Tensor, scales) -> Tensor:
    """Σ over (window, step) of the ensemble CRPS of mean + s·(samples − mean), for every s in
    ``scales`` and every variate → float64 (len(scales), N). samples (S, B, H, N), true (B, H, N).

    With d the sorted deviations from the mean, CRPS(s) = E|mean + s·d − y| − s·½E|d − d'|,
    and ½E|d − d'| = Σᵢ (2i − S − 1)·d₍ᵢ₎ / S²; a few windows at a time keep memory flat.
    """
    S, N = samples.shape[0], samples.shape[-1]
    weights = ((2 * torch.arange(1, S + 1) - S - 1).float() / S**2).view(-1, 1, 1, 1)
    term1 = torch.zeros(len(scales), N, dtype=torch.float64)
    spread = torch.zeros(N, dtype=torch.float64)
    for part in range(0, len(true), 4):
        x, y = samples[:, part : part + 4], true[part : part + 4]
        mean = x.mean(0)
        dev = (x - mean).sort(dim=0).values  # (S, b, H, N)
        spread += (weights * dev).sum((0, 1, 2)).double()
        offset = mean - y  # (b, H, N)
        buffer = torch.empty_like(dev)  # one buffer for all scales: wide data (321 variates)
        for k, scale in enumerate(list(scales)):  # made 3 tensors of 49 MB per scale before
            torch.mul(dev, float(scale), out=buffer).add_(offset).abs_()
            term1[k] += buffer.mean(0).sum((0, 1)).double()
    return term1 - torch.as_tensor(scales, dtype=torch.float64)[:, None] * spread


TABLE_COLUMNS = ("mse", "mae", "crps", "crps_norm", "coverage_50", "coverage_90", "sharpness_90")


def format_table(m: dict) -> str:
    """The model and both baselines side by side, one row each."""
    rows = [(m["model"], m)] + [(name, m["baselines"][name]) for name in BASELINES]
    width = max(len(name) for name, _ in rows)
    head = f"{'':{width}}  " + "  ".join(f"{c:>12}" for c in TABLE_COLUMNS)
    body = [
        f"{name:{width}}  " + "  ".join(f"{r[c]:12.4f}" for c in TABLE_COLUMNS) for name, r in rows
    ]
    tail = (
        f"({m['n_windows']} test windows, {m['n_samples']} samples, {m['sampler']} "
        f"{m['sampling_steps']} steps, {m['seconds_sampling']:.1f} s sampling; "
        "crps_norm in original units, the rest in normalised units)"
    )
    return "\n".join([head, *body, tail])


def forecast_table(samples: np.ndarray, dates, names) -> pd.DataFrame:
    """samples (S, H, N) in original units → one row per (date, variate) with summaries."""
    q = np.quantile(samples, QUANTILES_SAVED, axis=0)  # (Q, H, N)
    H, N = samples.shape[1:]
    table = pd.DataFrame(
        {
            "date": np.repeat(np.asarray(dates), N),
            "variate": np.tile(np.asarray(names, dtype=object), H),
            "mean": samples.mean(0).reshape(-1),
            "median": np.median(samples, axis=0).reshape(-1),
        }
    )
    for level, values in zip(QUANTILES_SAVED, q):
        if level != 0.5:  # the median has its own column
            table[f"q{round(level * 100):02d}"] = values.reshape(-1)
    return table


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
