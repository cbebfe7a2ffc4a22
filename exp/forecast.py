"""Forecasts of the real future as a tidy table: one row per (date, variate), original units."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from exp.evaluation import QUANTILES_SAVED


def quantile_column(level: float) -> str:
    return "median" if level == 0.5 else f"q{round(level * 100):02d}"


def forecast_table(samples: np.ndarray, dates, names, levels=QUANTILES_SAVED) -> pd.DataFrame:
    """samples (S, H, N) in original units → one row per (date, variate): mean, median and the
    other quantile levels (``q05`` …)."""
    H, N = samples.shape[1:]
    table = pd.DataFrame(
        {
            "date": np.repeat(np.asarray(dates), N),
            "variate": np.tile(np.asarray(names, dtype=object), H),
            "mean": samples.mean(0).reshape(-1),
        }
    )
    for level, values in zip(levels, np.quantile(samples, levels, axis=0)):
        table[quantile_column(level)] = values.reshape(-1)
    return table


def plot_forecast(folder: str, table: pd.DataFrame, history, history_dates, names) -> list[str]:
    """Fan charts of the last (up to) three variates after their recent history (L, N)."""
    from utils.plots import fan_chart

    os.makedirs(folder, exist_ok=True)
    paths = []
    shown = list(names)[-3:]  # the target is last for custom data
    for i, name in enumerate(shown):
        rows = table[table["variate"] == name]
        quantiles = {q: rows[quantile_column(q)].to_numpy() for q in QUANTILES_SAVED}
        path = os.path.join(folder, f"forecast_{i}_{safe_name(name)}.png")
        fan_chart(
            path,
            history[:, len(names) - len(shown) + i],
            None,
            quantiles,
            title=f"{name}: forecast of the next {len(rows)} steps (median, 50% and 90% bands)",
            x_history=history_dates,
            x_future=pd.DatetimeIndex(rows["date"]),
            ylabel=f"{name} (original units)",
        )
        paths.append(path)
    return paths


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
