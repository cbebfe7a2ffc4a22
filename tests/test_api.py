"""forecaster.py: train through the API, save, load in a fresh process and forecast exactly as
``run.py --is_training 0 --do_predict`` does with the same checkpoint and seed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import StandardScaler

import run
from data_provider.data_loader import DataError
from exp.exp_basic import CheckpointError
from forecaster import Forecast, Forecaster

SEQ_LEN, PRED_LEN = 24, 12
TINY = dict(d_model=16, d_ff=16, e_layers=1, n_heads=2, unet_channels=(8, 16), cond_dim=16,
            diffusion_steps=50, stage1_epochs=1, stage2_epochs=1, n_samples=8, sampler="ddim",
            sampling_steps=3, calib_windows=16, num_workers=0, batch_size=32)  # fmt: skip
SETTING = (
    "diffusion_forecast_test_iTransformerDiffusion_custom_series_ftM_sl24_ll12_pl12"
    "_dm16_nh2_el1_df16_fc1_ebtimeF_test_0"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_csv):
    """A tiny model fitted through the API on a daily CSV (target 'y' first in the file)."""
    root = tmp_path_factory.mktemp("api")
    (root / "train").mkdir()
    csv = synthetic_csv(root / "train", n_rows=214, n_cols=3, name="series.csv")
    model = Forecaster.fit(
        csv, target="y", seq_len=SEQ_LEN, pred_len=PRED_LEN, workdir=root / "work", **TINY
    )
    return root, csv, model


def cli_argv(root, csv, *extra: str) -> list[str]:
    """The same run as the API's, written as a user of run.py would write it."""
    return [
        "--task_name", "diffusion_forecast", "--model", "iTransformerDiffusion",
        "--data", "custom", "--root_path", str(csv.parent), "--data_path", csv.name,
        "--target", "y", "--freq", "D", "--seq_len", "24", "--label_len", "12",
        "--pred_len", "12", "--d_model", "16", "--d_ff", "16", "--e_layers", "1",
        "--n_heads", "2", "--unet_channels", "8,16", "--cond_dim", "16",
        "--diffusion_steps", "50", "--n_samples", "8", "--sampler", "ddim",
        "--sampling_steps", "3", "--calib_windows", "16", "--num_workers", "0",
        "--checkpoints", str(root / "work" / "checkpoints"),
        "--results", str(root / "cli_results"), "--test_results", str(root / "cli_figures"),
        "--result_file", str(root / "cli_results.txt"), *extra,
    ]  # fmt: skip


def test_fit_keeps_the_metrics_and_a_self_contained_checkpoint(trained):
    root, csv, model = trained
    assert np.isfinite(model.metrics["crps"]) and model.metrics["n_samples"] == 8
    assert model.checkpoint_path == str(root / "work" / "checkpoints" / SETTING / "checkpoint.pth")
    frame = pd.read_csv(csv)
    train_rows = frame.iloc[: int(len(frame) * 0.7)][["x1", "x2", "y"]].to_numpy()
    scaler = StandardScaler().fit(train_rows)
    for name in ("checkpoint.pth", "checkpoint_stage1.pth", "checkpoint_last.pth"):
        state = torch.load(root / "work" / "checkpoints" / SETTING / name, weights_only=True)
        data = state["data"]
        assert data["columns"] == ["x1", "x2", "y"], name  # custom: the target last
        assert np.allclose(data["mean"], scaler.mean_, rtol=1e-12), name
        assert np.allclose(data["scale"], scaler.scale_, rtol=1e-12), name
        assert data["freq"] == "D" and data["date_freq"] == "D", name
        if name == "checkpoint.pth":  # the evaluation stores its baselines' fit
            assert set(state["baseline_fit"]) >= {"sigma", "c", "quantiles"}, name
    state = torch.load(model.checkpoint_path, weights_only=True)
    assert list(state["calibration"]) == model.calibrated and len(model.calibrated) == 1


def test_an_older_checkpoint_is_refused_until_one_cli_evaluation_adds_its_data(trained):
    root, csv, _ = trained
    old = root / "old" / SETTING / "checkpoint.pth"
    old.parent.mkdir(parents=True)
    state = torch.load(root / "work" / "checkpoints" / SETTING / "checkpoint.pth")
    del state["data"]
    torch.save(state, old)
    with pytest.raises(CheckpointError, match=r"--is_training 0\), which adds them"):
        Forecaster.load(old)
    argv = cli_argv(root, csv, "--is_training", "0", "--checkpoints", str(root / "old"))
    run.main(argv)
    assert Forecaster.load(old).input_columns == ["x1", "x2", "y"]


def test_moved_checkpoint_in_a_fresh_process_forecasts_as_the_cli(trained, repo_root):
    root, csv, model = trained
    saved = root / "moved" / "model.pth"
    model.save(saved)
    seed = 7
    run.main(cli_argv(root, csv, "--is_training", "0", "--do_predict", "--seed", str(seed)))
    cli = pd.read_csv(root / "cli_results" / SETTING / "forecast.csv", parse_dates=["date"])

    # the data file and the whole work folder go away: the checkpoint must be enough
    (root / "new").mkdir()
    shutil.copy(csv, root / "new" / "later.csv")
    shutil.rmtree(root / "train"), shutil.rmtree(root / "work")
    snippet = textwrap.dedent(
        f"""
        from forecaster import Forecaster
        model = Forecaster.load({str(saved)!r})
        forecast = model.predict("new/later.csv", seed={seed})
        forecast.to_frame().to_csv("api_forecast.csv", index=False)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", snippet], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    api = pd.read_csv(root / "api_forecast.csv", parse_dates=["date"])

    assert list(api.columns) == list(cli.columns) == [
        "date", "variate", "mean", "q05", "q25", "median", "q75", "q95"
    ]  # fmt: skip
    assert api["date"].equals(cli["date"]) and api["variate"].equals(cli["variate"])
    numbers = api.columns[2:]
    np.testing.assert_allclose(api[numbers], cli[numbers], rtol=0, atol=1e-6)
    assert list(api["variate"].unique()) == ["x1", "x2", "y"]


def data_of(root, csv) -> pd.DataFrame:
    """The training CSV, or its copy once the moved-checkpoint test has deleted it."""
    return pd.read_csv(csv if csv.exists() else root / "new" / "later.csv")


def test_forecast_object(trained):
    root, csv, model = trained
    frame = data_of(root, csv)
    frame["date"] = pd.to_datetime(frame["date"])
    forecast = model.predict(frame.set_index("date"), seed=3)  # a DatetimeIndex works too
    assert isinstance(forecast, Forecast)
    S, H, N = forecast.samples.shape
    assert (S, H, N) == (8, PRED_LEN, 3) and forecast.columns == ["x1", "x2", "y"]
    np.testing.assert_array_equal(forecast.mean, forecast.samples.mean(0))
    levels = [0.0, 0.05, 0.3, 0.5, 0.77, 0.95, 1.0]
    stacked = forecast.quantile(levels)
    assert stacked.shape == (len(levels), H, N)
    assert (np.diff(stacked, axis=0) >= 0).all()  # monotone in q
    np.testing.assert_allclose(forecast.quantile(0.3), stacked[2])
    np.testing.assert_array_equal(stacked[0], forecast.samples.min(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        forecast.quantile(1.5)
    last = frame["date"].iloc[-1]
    assert list(forecast.dates) == list(pd.date_range(last, periods=H + 1, freq="D")[1:])
    table = forecast.to_frame(quantiles=(0.1, 0.5, 0.9))
    assert list(table.columns) == ["date", "variate", "mean", "q10", "median", "q90"]
    assert len(table) == H * N
    # the same seed gives the same forecast; the lookback is all that matters
    again = model.predict(frame.tail(SEQ_LEN), seed=3)
    np.testing.assert_array_equal(again.samples, forecast.samples)


def test_predict_explains_what_is_wrong_with_the_data(trained):
    root, csv, model = trained
    frame = data_of(root, csv)
    with pytest.raises(DataError) as info:
        model.predict(frame.drop(columns="x2"))
    message = str(info.value)
    assert "'x2'" in message and "'x1'" not in message.split(";")[0]
    assert message.count(". ") == 0  # one sentence
    with pytest.raises(DataError) as info:
        model.predict(frame.tail(SEQ_LEN - 5))
    assert f"{SEQ_LEN - 5} rows" in str(info.value) and f"seq_len = {SEQ_LEN}" in str(info.value)
    gap = frame.copy()
    gap.loc[len(gap) - 3, "x1"] = np.nan  # the run's --missing error: named like the CLI's
    with pytest.raises(DataError, match=r"column 'x1' has a missing value \(nan\) in row 211"):
        model.predict(gap)
    assert model.predict(gap, missing="interpolate", seed=1).samples.shape == (8, PRED_LEN, 3)


def test_an_uncalibrated_sampling_setting_is_a_clear_error_until_calibrated(trained):
    root, csv, model = trained
    frame = data_of(root, csv)
    with pytest.raises(CheckpointError) as info:
        model.predict(frame, n_samples=10)
    message = str(info.value)
    assert "no spread factors" in message and "--is_training 0" in message
    assert "calibrate(" in message and "calibrate_spread='none'" in message
    assert model.predict(frame, n_samples=10, calibrate_spread="none").samples.shape[0] == 10
    factors = model.calibrate(frame, n_samples=10)  # on the training data's validation rows
    assert len(factors) == 3 and len(model.calibrated) == 2
    assert model.predict(frame, n_samples=10).samples.shape[0] == 10
    with pytest.raises(DataError, match="not the data this model was trained on"):
        model.calibrate(frame.iloc[:-30], n_samples=10)
    with pytest.raises(ValueError, match="n_samples must be at least 1"):
        model.predict(frame, n_samples=0)


def test_flags_become_the_cli_argv():
    from forecaster import flags_to_argv

    argv = flags_to_argv(
        {"d_model": 16, "bounds": (-1, None), "nonnegative": False, "save_samples": True,
         "use_gpu": False, "unet_channels": [8, 16], "timestep_spacing": None}
    )  # fmt: skip
    assert argv == ["--d_model=16", "--bounds=-1,", "--save_samples", "--no-use_gpu",
                    "--unet_channels=8,16"]  # fmt: skip
    with pytest.raises(TypeError, match="run.py has no flag --d_modle"):
        flags_to_argv({"d_modle": 16})


def test_fit_on_a_dataframe_with_a_datetime_index(tmp_path):
    """A DataFrame is written to the work folder and trained through the CLI; the hourly
    frequency is inferred, the last column is the target, flags such as nonnegative pass."""
    rng = np.random.default_rng(2)
    index = pd.date_range("2022-05-01", periods=214, freq="h", name="when")
    frame = pd.DataFrame(
        {"load": rng.exponential(1.0, 214), "rain": rng.exponential(0.2, 214)}, index=index
    )
    model = Forecaster.fit(
        frame, seq_len=SEQ_LEN, pred_len=PRED_LEN, workdir=tmp_path, nonnegative=True, **TINY
    )
    args = model.args
    assert (args.freq, args.target, args.bounds) == ("h", "rain", [0.0, None])
    assert (tmp_path / "data.csv").is_file() and model.input_columns == ["load", "rain"]
    forecast = model.predict(frame)
    assert forecast.samples.min() >= 0
    assert forecast.dates[0] == index[-1] + pd.Timedelta(hours=1)
