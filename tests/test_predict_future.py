"""--do_predict: the real future after the CSV's last row, in original units, with dates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import run
from data_provider.data_loader import future_dates


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """A daily CSV with its own column names, the target 'sales' in the middle, large units."""
    folder = tmp_path_factory.mktemp("future")
    rng = np.random.default_rng(3)
    n = 365
    t = np.arange(n)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2022-03-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "temperature": 15 + 8 * np.sin(2 * np.pi * t / 365) + rng.standard_normal(n),
            "sales": 1000 + 200 * np.sin(2 * np.pi * t / 7) + 30 * rng.standard_normal(n),
            "visits": 5000 + 10 * t + 100 * rng.standard_normal(n),
        }
    )
    frame.to_csv(folder / "shop.csv", index=False)
    return folder, frame


def test_forecast_csv_continues_the_dates_in_original_units(daily):
    folder, frame = daily
    argv = [
        "--task_name", "diffusion_forecast", "--model", "iTransformerDiffusion", "--data", "custom",
        "--root_path", str(folder), "--data_path", "shop.csv", "--target", "sales", "--freq", "d",
        "--seq_len", "28", "--label_len", "14", "--pred_len", "14", "--features", "M",
        "--d_model", "16", "--d_ff", "16", "--e_layers", "1", "--n_heads", "2",
        "--unet_channels", "8,16", "--cond_dim", "16", "--diffusion_steps", "50",
        "--stage1_epochs", "2", "--stage2_epochs", "1", "--batch_size", "32",
        "--n_samples", "20", "--sampling_steps", "5", "--num_workers", "0", "--do_predict",
        "--checkpoints", str(folder / "ck"), "--results", str(folder / "res"),
        "--test_results", str(folder / "fig"), "--result_file", str(folder / "log.txt"),
    ]  # fmt: skip
    run.main(argv)
    (setting,) = list((folder / "res").iterdir())
    table = pd.read_csv(setting / "forecast.csv", parse_dates=["date"])
    # 14 future days × 3 variates, dates continuing the daily frequency after the last row
    assert len(table) == 14 * 3
    expected = pd.date_range(
        pd.Timestamp(frame["date"].iloc[-1]) + pd.Timedelta(days=1), periods=14
    )
    assert list(pd.DatetimeIndex(table["date"].unique())) == list(expected)
    # custom data: the target is moved last, the other columns keep their order
    assert list(table["variate"].unique()) == ["temperature", "visits", "sales"]
    # quantiles ordered, the median inside the 50% band
    q = table[["q05", "q25", "median", "q75", "q95"]].to_numpy()
    assert (np.diff(q, axis=1) >= -1e-6).all()
    # original units: each variate's forecast sits on its own scale, not around 0 ± 1
    for name in ("temperature", "sales", "visits"):
        mean = table.loc[table["variate"] == name, "mean"].to_numpy()
        recent = frame[name].iloc[-60:]
        assert abs(mean.mean() - recent.mean()) < 4 * recent.std(), name
    # a fan chart of the future was drawn
    assert any(p.name.startswith("forecast_") for p in (folder / "fig" / setting.name).iterdir())


def test_future_dates_follow_the_series_frequency():
    hourly = pd.date_range("2020-01-01", periods=50, freq="h")
    assert future_dates(hourly, 3)[0] == pd.Timestamp("2020-01-03 02:00")
    weekly = pd.date_range("2020-01-05", periods=30, freq="W-SUN")
    assert list(future_dates(weekly, 2)) == list(pd.date_range("2020-08-02", periods=2, freq="7D"))
    irregular = pd.DatetimeIndex(["2020-01-01", "2020-01-02", "2020-01-04", "2020-01-05"])
    assert future_dates(irregular, 1)[0] == pd.Timestamp("2020-01-06")
