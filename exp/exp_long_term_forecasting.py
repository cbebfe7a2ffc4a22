"""Deterministic long-term forecasting (TSLib's ``long_term_forecast`` task)."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from data_provider.data_factory import build_dataset
from exp.exp_basic import Exp_Basic, TrainingLoopMixin
from utils import distributed
from utils.metrics import metric
from utils.tools import EarlyStopping, adjust_learning_rate

log = logging.getLogger("tsdiff")


class Exp_Long_Term_Forecast(TrainingLoopMixin, Exp_Basic):
    supported_models = ("iTransformer",)

    def _batch_loss(self, batch, stage: str = "train"):
        """MSE of the forecast on one batch → (loss, pred (B, H, N'), true (B, H, N'))."""
        x, y, x_mark, y_mark = self._to_device(batch)
        H, label_len = self.args.pred_len, self.args.label_len
        dec_inp = torch.cat([y[:, :label_len], torch.zeros_like(y[:, -H:])], dim=1)
        with self.autocast():
            out = self.model(x, x_mark, dec_inp, y_mark)
        f_dim = -1 if self.args.features == "MS" else 0
        pred, true = out[:, -H:, f_dim:].float(), y[:, -H:, f_dim:]
        return F.mse_loss(pred, true), pred, true

    def train(self, setting: str):
        _, train_loader = self._get_data("train")
        _, vali_loader = self._get_data("val")
        path = self.checkpoint_path(setting)
        self.wrap_ddp()
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.args.learning_rate)
        scaler = self.grad_scaler()
        stopper = EarlyStopping(patience=self.args.patience)
        for epoch in range(1, self.args.train_epochs + 1):
            start = time.time()
            train_loss = self._train_epoch(train_loader, optimizer, scaler, "train", epoch)
            vali_loss = self._eval_loss(vali_loader, "val")
            log.info(
                "Epoch: %d cost time: %.1fs | Train Loss: %.7f Vali Loss: %.7f",
                epoch, time.time() - start, train_loss, vali_loss,
            )  # fmt: skip
            if stopper.step(vali_loss):
                self.save_checkpoint(path, epoch=epoch, best_score=vali_loss)
                log.info("Validation loss improved; saved %s", path)
            if stopper.early_stop:
                log.info("Early stopping")
                break
            adjust_learning_rate(optimizer, epoch, self.args)
        self.load_checkpoint(path)
        return self.model

    @torch.no_grad()
    def predict_loader(self, loader):
        """Forecasts for every window of a loader → (pred, true), each (windows, H, N').

        Under DDP each rank forecasts its share of the batches and all are gathered in order.
        """
        self.model.eval()
        rank, world = distributed.rank(), distributed.world_size()
        parts = []
        for index, batch in enumerate(loader):
            if index % world == rank:
                _, pred, true = self._batch_loss(batch, "test")
                parts.append((index, pred.cpu().numpy(), true.cpu().numpy()))
        parts = sorted(
            (p for rank_parts in distributed.gather_objects(parts) for p in rank_parts),
            key=lambda p: p[0],
        )
        return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    def test(self, setting: str, test: int = 0):
        test_data, test_loader = self._get_data("test")
        if test:
            self.load_checkpoint(self.checkpoint_path(setting))
        pred, true = self.predict_loader(test_loader)
        if self.args.inverse:
            pred, true = test_data.inverse_transform(pred), test_data.inverse_transform(true)
        mae, mse, rmse, mape, mspe = metric(pred, true)
        log.info("test windows: %d | mse:%.6f, mae:%.6f", len(pred), mse, mae)
        result = {"mae": mae, "mse": mse, "rmse": rmse, "mape": mape, "mspe": mspe}
        if not self.is_main:
            return result
        folder = self.results_dir(setting)
        np.save(os.path.join(folder, "metrics.npy"), np.array([mae, mse, rmse, mape, mspe]))
        np.save(os.path.join(folder, "pred.npy"), pred)
        np.save(os.path.join(folder, "true.npy"), true)
        with open(self.args.result_file, "a") as f:
            f.write(f"{setting}  \nmse:{mse}, mae:{mae}, rmse:{rmse}, windows:{len(pred)}\n\n")
        return result

    @torch.no_grad()
    def predict_future(self, setting: str) -> str | None:
        """Point forecast of the ``pred_len`` steps after the CSV's last row → forecast.csv."""
        if not self.is_main:
            return None
        data = build_dataset(self.args, "test")
        x, x_mark, dates = data.future_input()
        self.model.eval()
        x = torch.from_numpy(x)[None].to(self.device)  # (1, L, N)
        x_mark = torch.from_numpy(x_mark)[None].to(self.device)
        f = -1 if self.args.features == "MS" else 0
        pred = self.model(x, x_mark)[0, :, f:].cpu().numpy()  # (H, N')
        pred = data.inverse_transform(pred)
        names = data.columns[f:] if f else data.columns
        table = pd.DataFrame(
            {
                "date": np.repeat(np.asarray(dates), len(names)),
                "variate": np.tile(np.asarray(names, dtype=object), len(dates)),
                "mean": pred.reshape(-1),
            }
        )
        path = os.path.join(self.results_dir(setting), "forecast.csv")
        table.to_csv(path, index=False)
        log.info("Point forecast of the %d steps after the data written to %s", len(dates), path)
        return path
