"""utils/timefeatures.py against hand-computed calendar values and TSLib's frequency table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from utils.timefeatures import FREQ_CHOICES, n_time_features, time_features

# TSLib's layers/Embed.py ``freq_map``: the number of timeF features per frequency letter.
TSLIB_FREQ_MAP = {"h": 4, "t": 5, "s": 6, "m": 1, "a": 1, "w": 2, "d": 3, "b": 3}


def _dates(*stamps: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(list(stamps)))


def test_hourly_features_by_hand():
    # 2016-07-01 00:00 is a Friday (weekday 4), day 183 of leap year 2016.
    # 2016-12-31 23:45 is a Saturday (weekday 5), day 366; 2016-07-04 Monday, 07-03 Sunday.
    # 2017-01-01 12:00 is a Sunday, day 1.
    dates = _dates(
        "2016-07-01 00:00",
        "2016-12-31 23:45",
        "2016-07-04 06:00",
        "2016-07-03 12:00",
        "2017-01-01 12:00",
    )
    feats = time_features(dates, "h")
    assert feats.shape == (4, 5)
    hour, dow, dom, doy = feats
    np.testing.assert_allclose(hour, [-0.5, 0.5, 6 / 23 - 0.5, 12 / 23 - 0.5, 12 / 23 - 0.5])
    np.testing.assert_allclose(dow, [4 / 6 - 0.5, 5 / 6 - 0.5, -0.5, 0.5, 0.5])
    np.testing.assert_allclose(dom, [-0.5, 0.5, 3 / 30 - 0.5, 2 / 30 - 0.5, -0.5])
    np.testing.assert_allclose(doy, [182 / 365 - 0.5, 0.5, 185 / 365 - 0.5, 184 / 365 - 0.5, -0.5])


def test_all_features_lie_in_unit_interval_centered():
    dates = pd.date_range("2015-12-25", "2017-01-05", freq="37min")
    for freq in FREQ_CHOICES:
        feats = time_features(dates, freq)
        assert feats.shape == (n_time_features(freq), len(dates))
        assert feats.min(initial=0.0) >= -0.5 and feats.max(initial=0.0) <= 0.5


def test_minutely_has_five_rows_minute_first():
    dates = _dates("2016-12-31 23:45", "2016-07-01 00:00", "2016-07-01 00:59")
    feats = time_features(dates, "t")
    assert feats.shape == (5, 3)
    np.testing.assert_allclose(feats[0], [45 / 59 - 0.5, -0.5, 0.5])  # MinuteOfHour
    np.testing.assert_allclose(feats[1:], time_features(dates, "h"))  # then the hourly rows
    np.testing.assert_array_equal(time_features(dates, "15min"), feats)
    np.testing.assert_array_equal(time_features(dates, "min"), feats)


def test_secondly_has_six_rows_second_first():
    dates = _dates("2016-07-01 00:00:59", "2016-07-01 00:00:00")
    feats = time_features(dates, "s")
    assert feats.shape == (6, 2)
    np.testing.assert_allclose(feats[0], [0.5, -0.5])
    np.testing.assert_allclose(feats[1:], time_features(dates, "t"))


def test_daily_weekly_monthly_rows():
    dates = _dates("2016-07-04", "2016-01-01", "2016-12-31")
    daily = time_features(dates, "d")
    assert daily.shape == (3, 3)
    # DayOfWeek, DayOfMonth, DayOfYear (no hour)
    np.testing.assert_allclose(daily[0], [-0.5, 4 / 6 - 0.5, 5 / 6 - 0.5])
    np.testing.assert_allclose(daily[2], [185 / 365 - 0.5, -0.5, 0.5])
    np.testing.assert_array_equal(time_features(dates, "b"), daily)

    weekly = time_features(dates, "w")
    assert weekly.shape == (2, 3)
    # DayOfMonth, WeekOfYear (ISO): 2016-07-04 is ISO week 27, 2016-01-01 week 53 (of 2015),
    # 2016-12-31 week 52.
    np.testing.assert_allclose(weekly[0], [3 / 30 - 0.5, -0.5, 0.5])
    np.testing.assert_allclose(weekly[1], [26 / 52 - 0.5, 0.5, 51 / 52 - 0.5])

    monthly = time_features(dates, "m")
    assert monthly.shape == (1, 3)
    np.testing.assert_allclose(monthly[0], [6 / 11 - 0.5, -0.5, 0.5])  # MonthOfYear


@pytest.mark.parametrize("freq", ["fortnight", "q", "xyz", ""])
def test_unknown_freq_is_error_listing_choices(freq):
    with pytest.raises(ValueError) as info:
        time_features(_dates("2016-07-01"), freq)
    message = str(info.value)
    assert repr(freq) in message
    assert ", ".join(FREQ_CHOICES) in message
    with pytest.raises(ValueError):
        n_time_features(freq)


@pytest.mark.parametrize("freq", [f for f in TSLIB_FREQ_MAP if f != "a"])
def test_feature_counts_match_tslib_freq_map(freq):
    dates = pd.date_range("2016-07-01", periods=3, freq="h")
    assert n_time_features(freq) == TSLIB_FREQ_MAP[freq]
    assert time_features(dates, freq).shape == (TSLIB_FREQ_MAP[freq], 3)
    assert n_time_features(freq.upper()) == TSLIB_FREQ_MAP[freq]  # 'H', 'T', ... as in TSLib


@pytest.mark.parametrize("freq", ["a", "y", "YE", "A"])
def test_yearly_feature_count_is_consistent(freq):
    # TSLib's freq_map says 1 for 'a', but its time_features table has no yearly feature (the
    # GluonTS YearEnd entry is empty). Here the count and the array always agree.
    dates = pd.date_range("2016-07-01", periods=3, freq="h")
    assert time_features(dates, freq).shape == (n_time_features(freq), 3)
    assert n_time_features(freq) == n_time_features("y")
