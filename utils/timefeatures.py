"""Calendar features for the ``timeF`` embedding, with Time-Series-Library's ``freq`` table.

Each feature maps a timestamp to [-0.5, 0.5]. ``time_features(dates, freq)`` returns an array
shaped (n_features, len(dates)), exactly as TSLib's ``utils/timefeatures.py`` does, but without
relying on pandas' offset aliases (which changed between pandas versions: 'H' → 'h', 'T' → 'min').
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

Feature = Callable[[pd.DatetimeIndex], np.ndarray]


def second_of_minute(index: pd.DatetimeIndex) -> np.ndarray:
    return index.second.to_numpy() / 59.0 - 0.5


def minute_of_hour(index: pd.DatetimeIndex) -> np.ndarray:
    return index.minute.to_numpy() / 59.0 - 0.5


def hour_of_day(index: pd.DatetimeIndex) -> np.ndarray:
    return index.hour.to_numpy() / 23.0 - 0.5


def day_of_week(index: pd.DatetimeIndex) -> np.ndarray:
    return index.day_of_week.to_numpy() / 6.0 - 0.5


def day_of_month(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day.to_numpy() - 1) / 30.0 - 0.5


def day_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day_of_year.to_numpy() - 1) / 365.0 - 0.5


def month_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.month.to_numpy() - 1) / 11.0 - 0.5


def week_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.isocalendar().week.to_numpy().astype(np.int64) - 1) / 52.0 - 0.5


# TSLib's table: the features used for each base frequency.
FEATURES_BY_FREQ: dict[str, list[Feature]] = {
    "y": [],
    "m": [month_of_year],
    "w": [day_of_month, week_of_year],
    "d": [day_of_week, day_of_month, day_of_year],
    "b": [day_of_week, day_of_month, day_of_year],
    "h": [hour_of_day, day_of_week, day_of_month, day_of_year],
    "t": [minute_of_hour, hour_of_day, day_of_week, day_of_month, day_of_year],
    "s": [second_of_minute, minute_of_hour, hour_of_day, day_of_week, day_of_month, day_of_year],
}

# Aliases accepted for ``--freq`` (TSLib's letters and pandas' names), mapped to the base letter.
_ALIASES = {
    "y": "y", "a": "y", "ye": "y", "ys": "y", "as": "y",
    "m": "m", "me": "m", "ms": "m",
    "w": "w",
    "d": "d",
    "b": "b",
    "h": "h",
    "t": "t", "min": "t",
    "s": "s", "sec": "s",
}  # fmt: skip

FREQ_CHOICES = ("s", "t", "h", "d", "b", "w", "m", "y")


def base_freq(freq: str) -> str:
    """'15min' → 't', 'H' → 'h', '4h' → 'h', 'W-SUN' → 'w'; an unknown name is a ValueError."""
    name = re.sub(r"^\d+", "", freq.strip()).split("-")[0].lower()
    if name not in _ALIASES:
        raise ValueError(
            f"unknown --freq {freq!r}; use one of {', '.join(FREQ_CHOICES)} "
            "(s: secondly, t: minutely, h: hourly, d: daily, b: business days, w: weekly, "
            "m: monthly, y: yearly), optionally with a multiple such as 15min"
        )
    return _ALIASES[name]


def n_time_features(freq: str) -> int:
    return len(FEATURES_BY_FREQ[base_freq(freq)])


def time_features(dates: pd.DatetimeIndex | pd.Series, freq: str = "h") -> np.ndarray:
    """(n_features, len(dates)) calendar features in [-0.5, 0.5] for ``freq``."""
    index = pd.DatetimeIndex(dates)
    feats = FEATURES_BY_FREQ[base_freq(freq)]
    if not feats:
        return np.zeros((0, len(index)))
    return np.vstack([f(index) for f in feats])


def calendar_columns(dates: pd.Series, freq: str, minute: bool = False) -> np.ndarray:
    """TSLib's ``timeenc=0`` integer marks (month, day, weekday, hour[, minute // 15]) → (L, k)."""
    index = pd.DatetimeIndex(dates)
    cols = [index.month, index.day, index.day_of_week, index.hour]
    if minute or base_freq(freq) in ("t", "s"):
        cols.append(index.minute // 15)
    return np.stack([np.asarray(c) for c in cols], axis=1)
