"""A Python API beside ``run.py``: train, save, load and forecast with the command line's code.

    import pandas as pd
    from forecaster import Forecaster

    df = pd.read_csv("sales.csv")  # a date column, numeric columns
    model = Forecaster.fit(df, target="sales", seq_len=96, pred_len=24, nonnegative=True,
                           stage1_epochs=10, stage2_epochs=10)  # any run.py flag
    model.save("sales.pth")  # weights, scaler, columns, spread factors: all in one file
    print(model.metrics["crps"])  # the test split, scored as the CLI scores it

    forecast = Forecaster.load("sales.pth").predict(df.tail(200), seed=1)
    forecast.quantile([0.05, 0.95])  # (2, 24, N) in original units; also .mean, .dates
    forecast.to_frame().to_csv("forecast.csv", index=False)  # the table --do_predict writes

``Forecaster.fit`` writes a DataFrame to a CSV in ``workdir`` and runs ``run.main`` on it, so
training and evaluation are the CLI's own; the result is loaded back from the checkpoint, which
holds everything a forecast needs (the data need not exist any more). ``predict`` goes through
``Exp_Diffusion_Forecast.forecast_future``, the path of ``--do_predict``: the same seed gives the
same forecast as the CLI.

Spread factors (``--calibrate_spread``) are fitted per sampling setting (sampler, steps, sample
count, ...) on validation windows. ``fit`` fits them for its own setting; ``predict`` with
another setting needs them too: fit them with ``calibrate(data, ...)`` on the training data
(kept in memory; ``save`` writes them), or evaluate the setting once with the CLI
(``--is_training 0``), or pass ``calibrate_spread="none"``. Otherwise ``predict`` raises a
CheckpointError that says so.

The checkpoint holds the weights, the run's arguments (``--bounds`` included: every forecast is
kept inside them), the data's columns in the model's order, the training rows' scaler, the
time-feature and date frequencies, the baselines' fit and the spread factors per sampling
setting. A checkpoint from before it held the data's description is refused by ``load`` until
one CLI evaluation (``--is_training 0``) adds it.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import run
from data_provider.data_factory import build_dataset
from data_provider.data_loader import DataError, read_series_csv, read_series_frame
from exp.calibration import calibration_key
from exp.evaluation import QUANTILES_SAVED
from exp.exp_basic import CheckpointError, read_checkpoint, setting_name
from exp.exp_diffusion_forecast import Exp_Diffusion_Forecast
from exp.forecast import forecast_table
from utils.args import bounds_text, build_parser, check_args, check_diffusion_args, parse_bounds
from utils.timefeatures import base_freq
from utils.tools import atomic_save

__all__ = ["Forecast", "Forecaster"]

#: predict()'s sampling options → the run.py flag each one sets
SAMPLING_OPTIONS = {
    "n_samples": "n_samples",
    "sampler": "sampler",
    "steps": "sampling_steps",
    "seed": "seed",
    "eta": "eta",
    "timestep_spacing": "timestep_spacing",
    "calibrate_spread": "calibrate_spread",
    "sample_chunk": "sample_chunk",
}


class Forecast:
    """``samples`` (S, H, N) in original units for the H ``dates`` after the data and the N
    variates ``columns``."""

    def __init__(self, samples: np.ndarray, dates, columns: Iterable[str]):
        self.samples = np.asarray(samples)
        self.dates = pd.DatetimeIndex(dates)
        self.columns = [str(c) for c in columns]

    @property
    def mean(self) -> np.ndarray:
        """(H, N) the samples' mean."""
        return self.samples.mean(0)

    def quantile(self, q) -> np.ndarray:
        """(H, N) for a level q in [0, 1]; (K, H, N) for K levels."""
        levels = np.asarray(q, dtype=float)
        if levels.size == 0 or not np.all((levels >= 0) & (levels <= 1)):
            raise ValueError(f"quantile levels must lie in [0, 1], got {q!r}")
        return np.quantile(self.samples, levels, axis=0)

    def to_frame(self, quantiles=QUANTILES_SAVED) -> pd.DataFrame:
        """One row per (date, variate): ``date``, ``variate``, ``mean`` and one column per level
        (``q05``, ``median``, ...): the table ``--do_predict`` writes to forecast.csv."""
        self.quantile(list(quantiles))  # the same check
        return forecast_table(self.samples, self.dates, self.columns, levels=tuple(quantiles))

    def __repr__(self) -> str:
        S, H, N = self.samples.shape
        return (
            f"Forecast({S} samples of {H} steps × {N} variates {self.columns}, "
            f"{self.dates[0]} … {self.dates[-1]})"
        )


class Forecaster:
    """A trained diffusion forecaster: ``fit`` or ``load`` one, then ``predict``."""

    def __init__(self, exp: Exp_Diffusion_Forecast, state: dict, path: str):
        self._exp = exp
        self._state = state
        self.checkpoint_path = str(path)
        self.metrics: dict = {}  # fit(): the evaluation's metrics (metrics.json)
        self.workdir: Path | None = None  # fit(): the folder of the CSV and the run's outputs

    # ---- what the model is -------------------------------------------------------------------
    @property
    def args(self) -> argparse.Namespace:
        """A copy of the run's arguments."""
        return copy.deepcopy(self._exp.args)

    @property
    def input_columns(self) -> list[str]:
        """The columns ``predict`` needs, in the model's order (the target last for custom)."""
        return list(self._exp.data_meta["columns"])

    @property
    def columns(self) -> list[str]:
        """The variates that are forecast (only the target with --features MS)."""
        return self.input_columns[-1:] if self._exp.args.features == "MS" else self.input_columns

    @property
    def seq_len(self) -> int:
        return self._exp.args.seq_len

    @property
    def pred_len(self) -> int:
        return self._exp.args.pred_len

    @property
    def bounds(self) -> list[float | None] | None:
        """``[low, high]`` in original units (None: an open side), or None without bounds."""
        return self._exp.args.bounds

    @property
    def calibrated(self) -> list[str]:
        """The sampling settings whose spread factors are known (``calibration_key``)."""
        return sorted(self._exp.calibration)

    def __repr__(self) -> str:
        a = self._exp.args
        bounds = f", bounds {bounds_text(a.bounds)}" if a.bounds else ""
        return (
            f"Forecaster({a.model}, {self.seq_len} → {self.pred_len} steps of "
            f"{self.columns}{bounds}; {self.checkpoint_path})"
        )

    # ---- training ----------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        data: pd.DataFrame | str | os.PathLike,
        *,
        target: str | None = None,
        freq: str | None = None,
        seq_len: int = 96,
        pred_len: int = 96,
        model: str = "iTransformerDiffusion",
        workdir: str | os.PathLike | None = None,
        **flags: Any,
    ) -> Forecaster:
        """Train and evaluate as ``python run.py --task_name diffusion_forecast`` does.

        data: a DataFrame (a ``date`` column or a DatetimeIndex, numeric columns), written to
        ``workdir/data.csv``, or a CSV path. target: the column moved last (default: the last
        column). freq: the time-feature frequency (default: inferred from the dates). workdir:
        where the CSV, checkpoints, results and figures go (default: a new temporary folder).
        flags: any run.py flag by name (``d_model=16``, ``nonnegative=True``,
        ``bounds=(0, None)``, ``unet_channels=(8, 16)``); ``label_len`` defaults to seq_len // 2.
        """
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="fc_"))
        workdir.mkdir(parents=True, exist_ok=True)
        if flags.get("task_name", "diffusion_forecast") != "diffusion_forecast":
            raise ValueError("Forecaster trains --task_name diffusion_forecast only")
        missing = flags.get("missing", "error")
        if isinstance(data, pd.DataFrame):
            frame = read_series_frame(data, target, missing)  # the CLI's checks, named for a frame
            csv = write_csv(data, workdir / str(flags.pop("data_path", "data.csv")))
        else:
            csv = Path(data)
            frame = read_series_csv(str(csv), target, missing)
        if target is None:
            target = [str(c) for c in frame.columns if c != "date"][-1]
        if freq is None:
            freq = infer_freq(frame["date"])
        values = {
            "task_name": "diffusion_forecast",
            "is_training": 1,
            "model": model,
            "data": "custom",
            "root_path": str(csv.resolve().parent),
            "data_path": csv.name,
            "target": target,
            "freq": freq,
            "seq_len": seq_len,
            "label_len": seq_len // 2,
            "pred_len": pred_len,
            "checkpoints": str(workdir / "checkpoints"),
            "results": str(workdir / "results"),
            "test_results": str(workdir / "test_results"),
            "result_file": str(workdir / "result_diffusion_forecast.txt"),
            **flags,
        }
        argv = flags_to_argv(values)
        args = parse_quietly(argv)
        metrics = run.main(argv)  # the CLI's own wiring: checks, training, evaluation, run.log
        path = Path(args.checkpoints) / setting_name(args, args.itr - 1) / "checkpoint.pth"
        forecaster = cls.load(path)
        forecaster.metrics = metrics
        forecaster.workdir = workdir
        return forecaster

    # ---- checkpoints -------------------------------------------------------------------------
    @classmethod
    def load(cls, checkpoint_path: str | os.PathLike, device: str | None = None) -> Forecaster:
        """Everything from the checkpoint alone (it may have moved; the data need not exist).

        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; None: CUDA when available, as the CLI.
        """
        path = str(checkpoint_path)
        state = read_checkpoint(path)
        saved = state["args"]
        if saved.get("task_name") != "diffusion_forecast":
            raise CheckpointError(
                f"{path} is a {saved.get('task_name')} checkpoint; Forecaster loads "
                "diffusion_forecast checkpoints"
            )
        if state.get("data") is None:
            raise CheckpointError(
                f"{path} was written before checkpoints carried their data's columns and "
                "scaler; evaluate it once with the CLI (python run.py ... --is_training 0), "
                "which adds them, or train it again"
            )
        args = vars(build_parser().parse_args([]))  # flags added since keep their defaults
        args.update(saved)
        args = argparse.Namespace(**args)
        args.bounds = parse_bounds(args.bounds, args.nonnegative)
        args.use_multi_gpu, args.distributed = False, False
        if device is not None:
            device = torch.device(device)
            args.use_gpu = device.type == "cuda"
            args.gpu = device.index or 0
        exp = Exp_Diffusion_Forecast(args)
        exp.load_checkpoint(path)
        return cls(exp, state, path)

    def save(self, path: str | os.PathLike) -> str:
        """Write the checkpoint to ``path`` (atomically), with any spread factors fitted since
        it was loaded; ``load(path)`` gives this forecaster back."""
        state = {**self._state, "calibration": dict(self._exp.calibration)}
        atomic_save(state, str(path))
        return str(path)

    # ---- forecasting -------------------------------------------------------------------------
    def predict(
        self,
        data: pd.DataFrame | str | os.PathLike,
        *,
        n_samples: int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int | None = None,
        missing: str | None = None,
        **sampling: Any,
    ) -> Forecast:
        """Forecast the ``pred_len`` steps after the last row of ``data``.

        data: a DataFrame or CSV with the training columns (others are ignored) and at least
        ``seq_len`` rows; empty cells are handled as the run's --missing says (or ``missing``).
        n_samples, sampler, steps (--sampling_steps), seed, and in ``sampling`` eta,
        timestep_spacing, calibrate_spread, sample_chunk: default the run's. The samples go
        through the CLI's --do_predict path, spread factors and --bounds included.
        """
        options = dict(n_samples=n_samples, sampler=sampler, steps=steps, seed=seed, **sampling)
        args = self._sampling_args(options)
        values, dates = self._lookback(data, missing or args.missing)
        with self._using(args):
            try:
                self._exp.use_stored_spread()
            except CheckpointError as e:
                raise CheckpointError(self._uncalibrated(args)) from e
            samples, future = self._exp.forecast_future(values, dates)
        return Forecast(samples, future, self.columns)

    def calibrate(self, data: pd.DataFrame | str | os.PathLike, **options: Any) -> list[float]:
        """Fit the spread factors of a sampling setting (``predict``'s options) on the
        validation windows of ``data``, as a CLI evaluation would; they are kept for
        ``predict`` and written by ``save``. ``data`` must be the data the model was trained on
        (their training rows give the checkpoint's scaler). → the factors, one per variate."""
        args = self._sampling_args(options)
        if args.calibrate_spread == "none":
            return []
        with tempfile.TemporaryDirectory(prefix="fc_calibrate_") as folder:
            framed = isinstance(data, pd.DataFrame)
            csv = write_csv(data, Path(folder) / "data.csv") if framed else Path(data)
            args.root_path, args.data_path = str(csv.resolve().parent), csv.name
            args.num_workers = 0
            train = build_dataset(args, "train")  # the CLI's reader, checks and splits
            mean, scale = self._exp.scaler
            if list(train.columns) != self.input_columns or not (
                np.allclose(train.scaler.mean_, mean, rtol=1e-9, atol=0)
                and np.allclose(train.scaler.scale_, scale, rtol=1e-9, atol=0)
            ):
                raise DataError(
                    f"{'the DataFrame' if framed else csv} is not the data this model was "
                    "trained on: its training rows give other columns or another scaler, so "
                    "its validation split is not the model's; calibrate on the training data"
                )
            with self._using(args):
                factors = self._exp._fit_spread().tolist()
        self._exp.calibration[calibration_key(args)] = factors
        return factors

    # ---- helpers -------------------------------------------------------------------------------
    def _sampling_args(self, options: dict[str, Any]) -> argparse.Namespace:
        """The run's arguments with predict()'s options, checked as the CLI checks them."""
        unknown = sorted(set(options) - set(SAMPLING_OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown sampling option(s) {', '.join(unknown)}; choose from "
                f"{', '.join(SAMPLING_OPTIONS)}"
            )
        given = {SAMPLING_OPTIONS[k]: v for k, v in options.items() if v is not None}
        args = copy.deepcopy(self._exp.args)
        if given:  # parsed and checked as the CLI's flags are
            parsed = parse_quietly(flags_to_argv(given), check=False)
            for name in given:
                setattr(args, name, getattr(parsed, name))
            check_diffusion_args(_raising_parser(), args)
        return args

    @contextmanager
    def _using(self, args: argparse.Namespace):
        saved = self._exp.args
        self._exp.args = args
        try:
            yield
        finally:
            self._exp.args = saved
            self._exp.spread_scale = None

    def _lookback(self, data, missing: str) -> tuple[np.ndarray, pd.DatetimeIndex]:
        """data → (its rows of the model's columns, scaled with the training scaler, (T, N)
        float32; their dates), after the CLI's checks and --missing handling."""
        columns = self.input_columns
        if isinstance(data, pd.DataFrame):
            present = set(map(str, data.columns))
            if "date" not in present and isinstance(data.index, pd.DatetimeIndex):
                present.add("date")
            _require_columns(present, columns, "the DataFrame")
            subset = data[[c for c in data.columns if str(c) in {"date", *columns}]]
            frame = read_series_frame(subset, None, missing)
        else:
            frame = read_series_csv(str(data), None, missing)
            _require_columns(set(frame.columns), columns, str(data))
        L = self.seq_len
        if len(frame) < L:
            raise DataError(
                f"the data have {len(frame)} rows, but the model needs at least seq_len = {L} "
                "rows (its lookback window) to forecast"
            )
        mean, scale = self._exp.scaler
        values = (frame[columns].to_numpy(dtype=np.float64) - mean) / scale  # as the scaler does
        return values.astype(np.float32), pd.DatetimeIndex(frame["date"])

    def _uncalibrated(self, args: argparse.Namespace) -> str:
        return (
            f"{self.checkpoint_path} holds no spread factors for sampler {args.sampler} with "
            f"{args.sampling_steps} steps and {args.n_samples} samples (setting "
            f"{calibration_key(args)!r}; it has {self.calibrated or 'none'}): fit them with "
            "forecaster.calibrate(training_data, ...) with the same options, or evaluate this "
            "setting once with the CLI (python run.py ... --is_training 0 --sampler "
            f"{args.sampler} --sampling_steps {args.sampling_steps} --n_samples "
            f"{args.n_samples}), or predict with calibrate_spread='none'"
        )


def _require_columns(present: set[str], columns: list[str], where: str) -> None:
    lacking = [c for c in columns if c not in present]
    if lacking:
        names = ", ".join(repr(c) for c in lacking)
        raise DataError(
            f"{where} has no column {names}, which the model was trained on; it needs the "
            f"columns {columns} (and 'date')"
        )


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """A DataFrame (``date`` column or DatetimeIndex) as the CSV the CLI reads, cells as given:
    --missing fills them there, as it would fill the user's own file."""
    if "date" not in frame.columns and isinstance(frame.index, pd.DatetimeIndex):
        frame = frame.rename_axis("date").reset_index()
    frame.to_csv(path, index=False)
    return path


def infer_freq(dates) -> str:
    """The time-feature frequency of regular dates ('D', 'h', '15min', ...)."""
    recent = pd.DatetimeIndex(dates)[-100:]
    offset = pd.DatetimeIndex(recent.values, freq="infer").freq if len(recent) >= 3 else None
    freq = None if offset is None else offset.freqstr
    try:
        base_freq(freq or "")
    except ValueError:
        raise DataError(
            f"cannot tell the time-feature frequency from the dates (pandas infers {freq}); "
            "pass freq= one of s, t, h, d, b, w, m, y, or e.g. 15min"
        ) from None
    return freq


def flags_to_argv(values: dict[str, Any]) -> list[str]:
    """``{"d_model": 16, "nonnegative": True, "bounds": (0, None)}`` → run.py's argv."""
    actions = {opt: a for a in build_parser()._actions for opt in a.option_strings}
    argv: list[str] = []
    for name, value in values.items():
        option = f"--{name}"
        action = actions.get(option)
        if action is None:
            raise TypeError(f"run.py has no flag {option}")
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(option if value else f"--no-{name}")
        elif action.nargs == 0:  # store_true, store_const
            if value:
                argv.append(option)
        elif value is not None:
            if isinstance(value, (list, tuple)):
                value = ",".join("" if v is None else str(v) for v in value)
            argv.append(f"{option}={value}")  # '=': values such as -1,1 stay values
    return argv


class _ParserError(ValueError):
    """A flag value the CLI would refuse."""


def _raising_parser() -> argparse.ArgumentParser:
    parser = build_parser()

    def error(message: str):
        raise _ParserError(message)

    parser.error = error  # the CLI prints and exits; the API raises
    return parser


def parse_quietly(argv: list[str], check: bool = True) -> argparse.Namespace:
    """run.py's parsing and start-up checks, raising ValueError instead of exiting."""
    parser = _raising_parser()
    args = parser.parse_args(argv)
    if check:
        check_args(parser, args)
    return args
