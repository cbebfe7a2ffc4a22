"""Scoring a whole evaluation split: the model's and every baseline's ensembles, streamed batch by
batch into metric accumulators and ``.npy`` files.

Every method is scored by the same ensemble code. Metrics are in the normalised units of the data
(TSLib's default); the normalised CRPS and CRPS-sum (ratios over Σ|y|, the ProbTS/GluonTS
convention) in original units, as published tables do; ``--inverse`` adds every metric in original
units. Each batch's contribution is kept apart and merged in batch order at the end, so that
batches sharded over DDP ranks give bit-for-bit the single-process numbers.
"""

from __future__ import annotations

import json
import math
import os
from argparse import Namespace

import numpy as np
import torch
from torch import Tensor

from utils import distributed
from utils.metrics import (
    WINDOW_KEYS,
    ProbMetricAccumulator,
    metric,
    quantiles_from_sorted,
    sort_samples,
)

QUANTILES_SAVED = (0.05, 0.25, 0.5, 0.75, 0.95)
CHUNK_VALUES = 1 << 22  # sample values scored at a time (memory stays bounded)
TABLE_COLUMNS = ("mse", "mae", "crps", "crps_norm", "energy_score", "coverage_50", "coverage_90",
                 "sharpness_90")  # fmt: skip
PROB_METRICS = ("crps", "crps_fair", "crps_norm", "crps_sum", "coverage_50", "coverage_90",
                "sharpness_90", "energy_score", "variogram_score")  # fmt: skip


class Evaluation:
    """Streams the batches of one split; ``finish()`` returns the metrics dict.

    ``add_batch(index, first_row, methods, true, seconds)`` takes, per method name, the ensemble
    (S, B, H, N) in normalised units and the point forecast that MSE and MAE score (None: the
    sample mean); the first method is the model, whose arrays are written. Joint scores (energy
    over each window's (H, N) block, variogram of order 0.5 over each step's variates) and
    per-window scores are computed in normalised units; ``window_scores.npz``
    keeps each method's per-window CRPS, energy and variogram scores for paired comparisons.
    """

    def __init__(
        self, args: Namespace, scaler, n_windows: int, folder: str, model_name: str,
        baselines: tuple[str, ...], is_main: bool = True,
    ):  # fmt: skip
        self.args, self.folder, self.is_main = args, folder, is_main
        self.methods = (model_name, *baselines)
        f = -1 if args.features == "MS" else 0
        self.scale = torch.tensor(scaler.scale_[f:], dtype=torch.float64)
        self.shift = torch.tensor(scaler.mean_[f:], dtype=torch.float64)
        self.n_windows = n_windows
        self.arrays = self._open_arrays(len(self.scale))
        # Every chunk's sums go into one row of an array sized here, the per-window scores
        # into arrays of n_windows, so that scoring keeps nothing it allocates per batch: a
        # long-lived small allocation between the batches' large temporaries would pin the
        # heap, and the process would grow by the temporaries' size at every batch.
        S, H, N = args.n_samples, args.pred_len, len(self.scale)
        self.chunk = max(1, CHUNK_VALUES // (S * H * N))
        self.chunks_per_batch = -(-args.batch_size // self.chunk)
        self.n_rows = -(-n_windows // args.batch_size) * self.chunks_per_batch
        self.sums: np.ndarray | None = None  # (n_rows, state values), made at the first chunk
        self.layout: list[tuple[str, str, str, tuple[int, ...]]] = []  # (unit, method, key, shape)
        self.filled = np.zeros(self.n_rows, dtype=bool)
        self.seconds = 0.0
        self.window = {f"{name}/{key}": np.full(n_windows, np.nan) for name in self.methods
                       for key in WINDOW_KEYS}  # fmt: skip
        self.window_done = np.zeros(n_windows, dtype=bool)

    def _open_arrays(self, n_out: int) -> dict[str, np.ndarray]:
        """float32 .npy files written batch by batch (memory stays flat for big data)."""
        window = (self.n_windows, self.args.pred_len, n_out)
        shapes = {"pred": window, "pred_std": window, "true": window,
                  "quantiles": (len(QUANTILES_SAVED), *window)}  # fmt: skip
        if self.args.save_samples:
            shapes["samples"] = (self.args.n_samples, *window)
        arrays = {}
        for mode in ("w+", "r+"):  # rank 0 creates the files, then every other rank opens them
            if (mode == "w+") == self.is_main:
                for name, shape in shapes.items():
                    path = os.path.join(self.folder, f"{name}.npy")
                    arrays[name] = np.lib.format.open_memmap(path, mode, np.float32, shape)
            distributed.barrier()
        return arrays

    def add_batch(
        self, index: int, first_row: int, methods: dict[str, tuple[Tensor, Tensor | None]],
        true: Tensor, seconds: float,
    ) -> None:  # fmt: skip
        """Batch ``index`` starting at window ``first_row``: per method (samples (S, B, H, N),
        point (B, H, N) or None), true (B, H, N), normalised units. Windows are scored a few at
        a time (bounded memory)."""
        B = true.shape[0]
        for start in range(0, B, self.chunk):
            rows = slice(start, start + self.chunk)
            chunk = {}
            for name in self.methods:
                samples, point = methods[name]
                samples = samples[:, rows].float().cpu()
                point = None if point is None else point[rows].float().cpu()
                chunk[name] = (samples, sort_samples(samples), point)  # one sort serves all
            y = true[rows].float().cpu()
            # crps_norm and crps_sum (ratios over Σ|y|) in original units, the rest normalised
            units = (self.scale, self.shift)
            states = {"norm": self._accumulate(chunk, y, joint=True, ratio_units=units)}
            if self.args.inverse:  # every metric in original units as well
                s, b = self.scale.float(), self.shift.float()  # an order-keeping affine map
                orig = {k: (v * s + b, v_sorted * s + b, None if p is None else p * s + b)
                        for k, (v, v_sorted, p) in chunk.items()}  # fmt: skip
                states["orig"] = self._accumulate(orig, y * s + b, joint=False)
            row = index * self.chunks_per_batch + start // self.chunk
            self._keep(row, first_row + start, states, seconds if start == 0 else 0.0)
            self._write(first_row + start, *chunk[self.methods[0]][:2], y)

    def _accumulate(self, methods: dict, y: Tensor, joint: bool, ratio_units=None) -> dict:
        states = {}
        for name, (samples, ordered, point) in methods.items():
            acc = ProbMetricAccumulator(
                joint_scores=joint, variogram_over="variates", ratio_units=ratio_units
            )
            acc.update_samples(samples, y, sorted_samples=ordered, point=point)
            states[name] = acc.state()
        return states

    def _keep(self, row: int, first_window: int, states: dict, seconds: float) -> None:
        """Copy a chunk's states into row ``row`` and its per-window scores into place."""
        if self.sums is None:
            self.layout = [(unit, name, key, tuple(value.shape))
                           for unit, by_method in states.items()
                           for name, state in by_method.items()
                           for key, value in sorted(state["s"].items())]  # fmt: skip
            width = sum(math.prod(shape) for *_, shape in self.layout)
            self.sums = np.zeros((self.n_rows, width))
        values = [states[u][m]["s"][k].reshape(-1) for u, m, k, _ in self.layout]
        count = states["norm"][self.methods[0]]["n_windows"]
        self.sums[row] = torch.cat(values).numpy()
        self.filled[row] = True
        self.seconds += seconds
        self.window_done[first_window : first_window + count] = True
        for name in self.methods:
            for key, value in states["norm"][name]["w"].items():
                self.window[f"{name}/{key}"][first_window : first_window + count] = value.numpy()

    def _write(self, offset: int, samples: Tensor, ordered: Tensor, true: Tensor) -> None:
        rows = slice(offset, offset + samples.shape[1])
        self.arrays["pred"][rows] = samples.mean(0).numpy()
        self.arrays["pred_std"][rows] = samples.std(0, correction=0).numpy()
        self.arrays["true"][rows] = true.numpy()
        self.arrays["quantiles"][:, rows] = quantiles_from_sorted(ordered, QUANTILES_SAVED).numpy()
        if "samples" in self.arrays:
            self.arrays["samples"][:, rows] = samples.numpy()

    def _merged(self) -> tuple[dict, dict | None, float]:
        """Every rank's rows, summed in batch order (the same sums whatever the world size)."""
        done = self.window_done
        mine = None
        if self.sums is not None:  # a rank may have had no batch at all
            mine = (self.layout, self.filled, self.sums[self.filled], self.seconds, done,
                    {key: scores[done] for key, scores in self.window.items()})  # fmt: skip
        gathered = [part for part in distributed.gather_objects(mine) if part is not None]
        if not gathered:
            raise RuntimeError(f"evaluated 0 windows, expected {self.n_windows}")
        layout = gathered[0][0]
        sums, seconds = np.zeros((self.n_rows, gathered[0][2].shape[1])), 0.0
        for _, filled, values, sec, done, window in gathered:
            sums[filled] = values
            seconds += sec
            self.window_done |= done
            for key, scores in window.items():
                self.window[key][done] = scores
        total, offset = sums.sum(0), 0
        states: dict = {}  # unit → method → the summed state
        for unit, name, key, shape in layout:
            size = math.prod(shape)
            value = torch.from_numpy(total[offset : offset + size].reshape(shape))
            states.setdefault(unit, {}).setdefault(name, {})[key] = value
            offset += size
        H, N, n_windows = self.args.pred_len, len(self.scale), int(self.window_done.sum())
        accs = {unit: {} for unit in states}
        for unit, by_method in states.items():
            for name, s in by_method.items():
                accs[unit][name] = ProbMetricAccumulator()
                accs[unit][name].merge({"s": s, "n_windows": n_windows, "hn": (H, N), "w": {}})
        return accs["norm"], accs.get("orig"), seconds

    def finish(self, **extra) -> dict:
        """Merge, check that every window was scored, save the files; ``extra`` goes into the
        metrics dict (sampler, steps, spread factors, ...)."""
        norm, orig, seconds = self._merged()
        for array in self.arrays.values():
            array.flush()
        distributed.barrier()
        model, baselines = self.methods[0], self.methods[1:]
        done = norm[model].n_windows
        if done != self.n_windows:
            raise RuntimeError(f"evaluated {done} windows, expected {self.n_windows}")
        result = _plain(norm[model].compute())
        result["baselines"] = {name: _plain(norm[name].compute()) for name in baselines}
        if self.args.inverse:
            orig_result = {name: _plain(orig[name].compute()) for name in self.methods}
            result["original_units"] = {
                **orig_result[model],
                "baselines": {name: orig_result[name] for name in baselines},
            }
        pred, true = self.arrays["pred"], self.arrays["true"]
        point = metric(np.asarray(pred), np.asarray(true))  # TSLib's [mae, mse, rmse, mape, mspe]
        result.update(model=model, seconds_sampling=seconds, **extra)
        if self.is_main:
            self._save(result, list(point))
            np.savez(os.path.join(self.folder, "window_scores.npz"), **self.window)
        return result

    def _save(self, result: dict, point_metrics: list) -> None:
        np.save(os.path.join(self.folder, "metrics.npy"), np.array(point_metrics))
        prob = np.array([result[k] for k in PROB_METRICS])
        np.save(os.path.join(self.folder, "prob_metrics.npy"), prob)
        with open(os.path.join(self.folder, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)


def _plain(metrics: dict) -> dict:
    """Metrics without entries that are not numbers for this method (NaN joint scores of a
    unit in which they were not computed); JSON has no NaN."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


def format_table(m: dict) -> str:
    """The model and every baseline side by side, one row each."""
    rows = [(m["model"], m)] + list(m["baselines"].items())
    width = max(len(name) for name, _ in rows)
    heads = {"energy_score": "energy", "coverage_50": "cov50", "coverage_90": "cov90",
             "sharpness_90": "sharp90", "crps_norm": "crps_norm"}  # fmt: skip
    head = f"{'':{width}}  " + "  ".join(f"{heads.get(c, c):>9}" for c in TABLE_COLUMNS)
    body = [
        f"{name:{width}}  " + "  ".join(f"{r.get(c, math.nan):9.4f}" for c in TABLE_COLUMNS)
        for name, r in rows
    ]
    tail = (
        f"({m['n_windows']} {m['eval_split']} windows, {m['n_samples']} samples, {m['sampler']} "
        f"{m['sampling_steps']} steps, {m['seconds_sampling']:.1f} s sampling; "
        "crps_norm in original units, the rest in normalised units)"
    )
    return "\n".join([head, *body, tail])
