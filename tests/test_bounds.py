"""--bounds / --nonnegative: every sample of the model (and of the baselines) stays inside the
physical range in original units, in the scores, the saved arrays, forecast.csv and the API."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import properscoring as ps
import pytest
import torch

import run
from exp.calibration import SCALES, crps_by_spread_scale
from forecaster import Forecaster
from utils.args import parse_args

SETTING = (
    "diffusion_forecast_test_iTransformerDiffusion_custom_counts_ftM_sl24_ll12_pl12"
    "_dm16_nh2_el1_df16_fc1_ebtimeF_test_0"
)


def argv(folder, *extra: str) -> list[str]:
    return [
        "--task_name", "diffusion_forecast", "--model", "iTransformerDiffusion",
        "--data", "custom", "--root_path", str(folder), "--data_path", "counts.csv",
        "--target", "c", "--freq", "d", "--seq_len", "24", "--label_len", "12",
        "--pred_len", "12", "--d_model", "16", "--d_ff", "16", "--e_layers", "1",
        "--n_heads", "2", "--unet_channels", "8,16", "--cond_dim", "16",
        "--diffusion_steps", "50", "--stage1_epochs", "1", "--stage2_epochs", "1",
        "--batch_size", "32", "--n_samples", "8", "--sampler", "ddim", "--sampling_steps", "3",
        "--calib_windows", "16", "--num_workers", "0", "--save_samples", "--do_predict",
        "--checkpoints", str(folder / "checkpoints"), "--results", str(folder / "results"),
        "--test_results", str(folder / "figures"),
        "--result_file", str(folder / "result.txt"), *extra,
    ]  # fmt: skip


def outputs(folder):
    """(samples.npy and forecast.csv in original units, metrics.json) of the last run."""
    state = torch.load(folder / "checkpoints" / SETTING / "checkpoint.pth", weights_only=True)
    mean, scale = np.array(state["data"]["mean"]), np.array(state["data"]["scale"])
    results = folder / "results" / SETTING
    samples = np.load(results / "samples.npy").astype(np.float64) * scale + mean
    table = pd.read_csv(results / "forecast.csv")
    with open(results / "metrics.json") as f:
        return samples, table, json.load(f)


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    """Three positive series close to 0 (skewed, like counts or rainfall), and a tiny model
    trained on them with --nonnegative: (folder, its metrics, its outputs)."""
    folder = tmp_path_factory.mktemp("bounds")
    rng = np.random.default_rng(5)
    n = 214
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2021-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "a": rng.exponential(1.0, n),
            "b": 3 * rng.exponential(1.0, n) + 0.01,
            "c": 0.5 * rng.exponential(1.0, n),
        }
    )
    frame.to_csv(folder / "counts.csv", index=False)
    metrics = run.main(argv(folder, "--nonnegative"))
    return folder, metrics, outputs(folder)


def test_nonnegative_keeps_every_sample_and_quantile_at_or_above_zero(counts):
    folder, metrics, (samples, table, saved) = counts
    assert saved["bounds"] == [0.0, None] and metrics["bounds"] == [0.0, None]
    assert (samples >= -1e-9).all()  # float32 arrays: zero up to their rounding
    assert (table[["mean", "q05", "q25", "median", "q75", "q95"]].to_numpy() >= 0).all()
    assert (table["q05"] == 0).any()  # the bound is reached: the samples were clipped there
    assert "bounds:[0, inf)" in (folder / "result.txt").read_text().split("\n\n")[0]
    state = torch.load(folder / "checkpoints" / SETTING / "checkpoint.pth", weights_only=True)
    assert state["args"]["bounds"] == [0.0, None]
    assert [k for k in state["calibration"] if k.endswith("|bounds=0,")]  # bounded samples

    # the API forecasts with the checkpoint's bounds
    forecast = Forecaster.load(folder / "checkpoints" / SETTING / "checkpoint.pth").predict(
        folder / "counts.csv"
    )
    assert forecast.samples.min() == 0.0

    # the same checkpoint without the flag: the samples go below zero
    again = run.main(argv(folder, "--is_training", "0"))
    samples, table, saved = outputs(folder)
    assert saved["bounds"] is None and again["bounds"] is None
    assert (samples < 0).any() and (table["q05"] < 0).any()


def test_bounds_clip_the_baselines_too(counts, caplog):
    """Every baseline's ensemble obeys the bounds too, so the comparison stays fair: with the
    range [0, 0.5], no 90% interval (normalised units) is wider than the range."""
    folder = counts[0]
    with caplog.at_level("INFO", logger="tsdiff"):
        run.main(argv(folder, "--is_training", "0", "--bounds", "0,0.5"))
    assert caplog.messages.count("Samples are kept within [0, 0.5] in original units") == 1
    samples, table, saved = outputs(folder)
    assert saved["bounds"] == [0.0, 0.5]
    assert samples.min() >= -1e-9 and samples.max() <= 0.5 + 1e-9
    assert table[["q05", "q95", "mean"]].to_numpy().max() <= 0.5
    state = torch.load(folder / "checkpoints" / SETTING / "checkpoint.pth", weights_only=True)
    widest = np.mean(0.5 / np.array(state["data"]["scale"]))  # the range, per variate, averaged
    unbounded = run.main(argv(folder, "--is_training", "0"))["baselines"]
    for name, scores in saved["baselines"].items():
        assert scores["sharpness_90"] <= widest + 1e-6, name
        if name != "itransformer":  # a point mass has no width to lose
            assert scores["sharpness_90"] < unbounded[name]["sharpness_90"], name


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bounds", "2,1"], "LOW < HIGH"),
        (["--bounds", "a,1"], "two numbers"),
        (["--bounds", ","], "neither side"),
        (["--bounds", "1"], "LOW,HIGH"),
        (["--nonnegative", "--bounds", "1,"], "--nonnegative sets the lower bound to 0"),
    ],
)
def test_bad_bounds_stop_the_run_at_start_up(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--task_name", "diffusion_forecast", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bounds_parse_either_side_open():
    common = ["--task_name", "diffusion_forecast"]
    assert parse_args([*common, "--bounds", "0,"]).bounds == [0.0, None]
    assert parse_args([*common, "--bounds=-1.5,"]).bounds == [-1.5, None]
    assert parse_args([*common, "--bounds", ",10"]).bounds == [None, 10.0]
    assert parse_args([*common, "--nonnegative", "--bounds", ",10"]).bounds == [0.0, 10.0]
    assert parse_args([*common, "--nonnegative"]).bounds == [0.0, None]
    assert parse_args(common).bounds is None


def test_spread_calibration_scores_the_bounded_samples():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, 3, 2, generator=g), torch.randn(5, 3, 2, generator=g)
    low, high = torch.tensor([-0.3, -1.0]), torch.tensor([0.5, 10.0])
    scales = SCALES[::20]
    total = crps_by_spread_scale(x, y, scales, low, high)
    for k, s in enumerate(scales):
        mean = x.mean(0)
        bounded = (mean + s * (x - mean)).clamp(low, high)
        reference = ps.crps_ensemble(y.numpy(), np.moveaxis(bounded.numpy(), 0, -1)).sum((0, 1))
        np.testing.assert_allclose(total[k].numpy(), reference, rtol=1e-5)
