"""data_provider/: TSLib's split borders, window counts, train-only scaling, loaders, dimensions."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from data_provider.data_factory import check_data, data_provider, resolve_dimensions
from data_provider.data_loader import (
    DataError,
    Dataset_Custom,
    Dataset_ETT_hour,
    Dataset_ETT_minute,
    read_series_csv,
)
from utils.args import parse_args

ETTH1_COLS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
HOUR_MONTH = 30 * 24  # TSLib's ETT "month"
TRAIN_END, VAL_END, TEST_END = 12 * HOUR_MONTH, 16 * HOUR_MONTH, 20 * HOUR_MONTH  # 8640 ...


@pytest.fixture(scope="module")
def etth1_raw(repo_root) -> pd.DataFrame:
    return pd.read_csv(repo_root / "dataset" / "ETT-small" / "ETTh1.csv")


def _ett(repo_root, cls, flag, seq_len=96, label_len=48, pred_len=96, name="ETTh1.csv", **kw):
    return cls(
        root_path=str(repo_root / "dataset" / "ETT-small"),
        data_path=name,
        flag=flag,
        size=(seq_len, label_len, pred_len),
        features=kw.pop("features", "M"),
        timeenc=kw.pop("timeenc", 1),
        **kw,
    )


# ---- ETT hourly -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred_len", "expected_test"), [(96, 2785), (192, 2689), (336, 2545), (720, 2161)]
)
def test_etth1_window_counts(repo_root, pred_len, expected_test):
    L = 96
    # test rows [11520 - L, 14400): 2880 + L rows, one window per start with L + H rows left.
    assert (TEST_END - (VAL_END - L)) - L - pred_len + 1 == expected_test
    lengths = {
        flag: len(_ett(repo_root, Dataset_ETT_hour, flag, seq_len=L, pred_len=pred_len))
        for flag in ("train", "val", "test")
    }
    assert lengths["test"] == expected_test
    assert lengths["train"] == 8640 - L - pred_len + 1
    assert lengths["val"] == (VAL_END - (TRAIN_END - L)) - L - pred_len + 1
    assert lengths["val"] == 2880 - pred_len + 1


def test_etth1_first_test_window_is_at_the_border(repo_root, etth1_raw):
    L, label_len, H = 96, 48, 96
    ds = _ett(repo_root, Dataset_ETT_hour, "test", L, label_len, H)
    raw = etth1_raw[ETTH1_COLS].to_numpy()
    scaled = StandardScaler().fit(raw[:TRAIN_END]).transform(raw)

    x, y, x_mark, y_mark = ds[0]
    assert x.shape == (L, 7) and y.shape == (label_len + H, 7)
    assert x_mark.shape == (L, 4) and y_mark.shape == (label_len + H, 4)
    np.testing.assert_allclose(x, scaled[11520 - 96 : 11520], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x[0], scaled[11424], rtol=1e-5, atol=1e-5)
    # the forecast targets (after the label_len start tokens) begin at row 11520
    np.testing.assert_allclose(y[label_len], scaled[11520], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, scaled[11520 - label_len : 11520 + H], rtol=1e-5, atol=1e-5)
    # the time marks belong to the same rows: row 11424 is 2017-10-20 00:00 (a Friday)
    assert pd.Timestamp(etth1_raw["date"].iloc[11424]) == pd.Timestamp("2017-10-20 00:00")
    np.testing.assert_allclose(x_mark[0], [-0.5, 4 / 6 - 0.5, 19 / 30 - 0.5, 292 / 365 - 0.5])

    last_x, last_y, _, _ = ds[len(ds) - 1]
    np.testing.assert_allclose(last_y[-1], scaled[TEST_END - 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last_x[0], scaled[TEST_END - H - L], rtol=1e-5, atol=1e-5)


def test_etth1_first_val_window_is_at_the_border(repo_root, etth1_raw):
    ds = _ett(repo_root, Dataset_ETT_hour, "val", 96, 48, 96)
    raw = etth1_raw[ETTH1_COLS].to_numpy()
    scaled = StandardScaler().fit(raw[:TRAIN_END]).transform(raw)
    x, y, _, _ = ds[0]
    np.testing.assert_allclose(x[0], scaled[TRAIN_END - 96], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[48], scaled[TRAIN_END], rtol=1e-5, atol=1e-5)


def test_scaler_is_fitted_on_train_rows_only(repo_root, etth1_raw):
    ds = _ett(repo_root, Dataset_ETT_hour, "test")
    train = etth1_raw[ETTH1_COLS].iloc[:TRAIN_END]
    np.testing.assert_allclose(ds.scaler.mean_, train.mean().to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(ds.scaler.scale_, train.std(ddof=0).to_numpy(), rtol=1e-10)
    full = etth1_raw[ETTH1_COLS]
    assert np.all(np.abs(ds.scaler.mean_ - full.mean().to_numpy()) > 1e-3)
    assert np.all(np.abs(ds.scaler.scale_ - full.std(ddof=0).to_numpy()) > 1e-3)


# ---- ETT minutely ---------------------------------------------------------------------------


def test_ettm1_borders_are_four_times_hourly(repo_root):
    L, H = 96, 96
    month = 30 * 24 * 4
    ds = _ett(
        repo_root, Dataset_ETT_minute, "test", L, 48, H, name="ETTm1.csv", timeenc=0, freq="t"
    )
    # test rows [46080 - 96, 57600) → 11520 + 96 rows
    assert 16 * month == 46080 and 20 * month == 57600
    assert len(ds) == 11520 + 96 - 96 - 96 + 1 == 11425
    raw = pd.read_csv(ds.path)
    assert pd.Timestamp(ds.dates[0]) == pd.Timestamp(raw["date"].iloc[46080 - 96])
    assert pd.Timestamp(ds.dates[-1]) == pd.Timestamp(raw["date"].iloc[57600 - 1])
    values = raw[ETTH1_COLS].to_numpy()
    scaled = StandardScaler().fit(values[: 12 * month]).transform(values)
    np.testing.assert_allclose(ds[0][1][48], scaled[46080], rtol=1e-5, atol=1e-5)
    # timeenc=0 marks for 't': month, day, weekday, hour, minute // 15
    assert ds[0][2].shape == (L, 5)


# ---- custom 7:1:2 ---------------------------------------------------------------------------


def _custom(path, flag, features="M", size=(8, 4, 4), target="y"):
    return Dataset_Custom(
        root_path=str(path.parent),
        data_path=path.name,
        flag=flag,
        size=size,
        features=features,
        target=target,
        timeenc=1,
        freq="d",
    )


def test_custom_borders_are_7_1_2(tmp_path, synthetic_csv):
    n = 214  # 0.7 n = 149.8 and 0.2 n = 42.8: int() truncates, round() would not
    path = synthetic_csv(tmp_path, n_rows=n, n_cols=3)
    L, label_len, H = 8, 4, 4
    num_train, num_test = 149, 42
    num_val = n - num_train - num_test  # 23
    raw = pd.read_csv(path)[["x1", "x2", "y"]].to_numpy()
    scaled = StandardScaler().fit(raw[:num_train]).transform(raw)

    train, val, test = (_custom(path, f, size=(L, label_len, H)) for f in ("train", "val", "test"))
    assert len(train) == num_train - L - H + 1
    assert len(val) == num_val + L - L - H + 1
    assert len(test) == num_test + L - L - H + 1
    np.testing.assert_allclose(train.scaler.mean_, raw[:num_train].mean(0), rtol=1e-10)
    np.testing.assert_allclose(val[0][0][0], scaled[num_train - L], rtol=1e-5)
    np.testing.assert_allclose(val[0][1][label_len], scaled[num_train], rtol=1e-5)
    np.testing.assert_allclose(test[0][0][0], scaled[n - num_test - L], rtol=1e-5)
    np.testing.assert_allclose(test[0][1][label_len], scaled[n - num_test], rtol=1e-5)
    np.testing.assert_allclose(test[len(test) - 1][1][-1], scaled[n - 1], rtol=1e-5)


def test_custom_moves_target_last_and_selects_features(tmp_path, synthetic_csv):
    path = synthetic_csv(tmp_path, n_rows=214, n_cols=4)
    assert list(pd.read_csv(path).columns) == ["date", "y", "x1", "x2", "x3"]
    raw = pd.read_csv(path)

    m = _custom(path, "train", "M")
    ms = _custom(path, "train", "MS")
    s = _custom(path, "train", "S")
    assert m.columns == ["x1", "x2", "x3", "y"]
    assert ms.columns == ["x1", "x2", "x3", "y"]
    assert s.columns == ["y"]
    assert m.data_x.shape[1] == 4 and ms.data_x.shape[1] == 4 and s.data_x.shape[1] == 1

    y_train = raw["y"].iloc[:149]
    expected_y = (raw["y"] - y_train.mean()) / y_train.std(ddof=0)
    np.testing.assert_allclose(ms.data_x[:, -1], expected_y.iloc[:149], rtol=1e-5)
    np.testing.assert_allclose(s.data_x[:, 0], expected_y.iloc[:149], rtol=1e-5)
    x1_train = raw["x1"].iloc[:149]
    expected_x1 = (x1_train - x1_train.mean()) / x1_train.std(ddof=0)
    np.testing.assert_allclose(ms.data_x[:, 0], expected_x1, rtol=1e-5, atol=1e-6)
    assert ms[0][0].shape == (8, 4) and s[0][0].shape == (8, 1)


def test_custom_inverse_transform_round_trips(tmp_path, synthetic_csv):
    path = synthetic_csv(tmp_path, n_rows=214, n_cols=3)
    raw = pd.read_csv(path)[["x1", "x2", "y"]].to_numpy()
    ds = _custom(path, "test", "M")
    start = 214 - 42 - 8
    np.testing.assert_allclose(ds.inverse_transform(ds.data_x), raw[start:], rtol=1e-5)
    windows = np.stack([ds[i][1] for i in range(3)])  # (3, label_len + H, N)
    back = ds.inverse_transform(windows)
    assert back.shape == windows.shape
    np.testing.assert_allclose(back[1], raw[start + 1 + 8 - 4 : start + 1 + 8 + 4], rtol=1e-5)
    s = _custom(path, "test", "S")
    np.testing.assert_allclose(s.inverse_transform(s.data_x)[:, 0], raw[start:, -1], rtol=1e-5)


def test_custom_too_short_is_a_clear_error(tmp_path, synthetic_csv):
    # 30 rows: train 21, test 6, val 3 (+ 8 lookback rows) = 11 < 8 + 4
    path = synthetic_csv(tmp_path, n_rows=30, n_cols=2)
    with pytest.raises(DataError) as info:
        _custom(path, "train", size=(8, 4, 4))
    message = str(info.value)
    assert re.search(r"val split has 11 rows .* seq_len \+ pred_len = 8 \+ 4", message)
    # the message states the rule: 7:1:2, train L + H rows, val and test H rows each
    assert "7:1:2" in message and "train needs seq_len + pred_len rows" in message
    assert "val and test pred_len rows each" in message
    assert "at least 31 rows" in message and "\n" not in message


@pytest.mark.parametrize(("seq_len", "pred_len"), [(8, 4), (24, 12), (96, 96), (16, 30)])
def test_custom_split_rule(seq_len, pred_len):
    """The rule the message states is the rule the borders apply: from min_rows on, every
    length gives each split a window (train L + H rows, val and test H rows beyond their L
    lookback rows); min_rows - 1 rows do not."""
    n_min = Dataset_Custom.min_rows(seq_len, pred_len)

    def fits(n):
        try:
            Dataset_Custom.check_split_lengths("x.csv", n, seq_len, pred_len)
        except DataError:
            return False
        return True

    def rule(n):
        train, test = int(n * 0.7), int(n * 0.2)
        return train >= seq_len + pred_len and n - train - test >= pred_len and test >= pred_len

    assert not fits(n_min - 1)
    for n in range(max(n_min - 40, 1), n_min + 40):
        assert fits(n) == rule(n), n
        assert fits(n) or n < n_min, n


# ---- missing values -------------------------------------------------------------------------


def _csv(tmp_path, text, name="gaps.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


GAPS = (  # a: two holes (one leading), b: 'NaN' text and an empty cell, c: one at the end
    "date,a,b,c\n"
    "2020-01-01,,1,10\n"
    "2020-01-02,2,NaN,20\n"
    "\n"  # a blank line: pandas skips it, the line numbers count it
    "2020-01-03,,4,30\n"
    "2020-01-04,8,,40\n"
    "2020-01-05,10,5,\n"
)


def test_missing_cell_is_an_error_naming_column_line_count_and_flags(tmp_path):
    path = _csv(tmp_path, GAPS)
    with pytest.raises(DataError) as info:
        read_series_csv(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: column 'a' has a missing value (nan) on line 2:")
    assert "the cell is EMPTY" in message
    assert "5 cells are missing in all ('a' 2, 'b' 2, 'c' 1)" in message
    assert "--missing interpolate" in message and "--missing ffill" in message
    assert "\n" not in message


def test_missing_nan_text_and_line_numbers_after_blank_lines(tmp_path):
    # 'b' on data row 1 reads NaN; rows after the blank line are one line further down
    path = _csv(tmp_path, GAPS.replace("2020-01-01,,1", "2020-01-01,1,1"))
    with pytest.raises(DataError) as info:
        read_series_csv(str(path), missing="error")
    message = str(info.value)
    assert "column 'b' has a missing value (nan) on line 3: the cell reads 'NaN'" in message
    assert "4 cells are missing in all" in message
    only = _csv(tmp_path, "date,a\n2020-01-01,1\n\n2020-01-02,\n2020-01-03,3\n", "one.csv")
    with pytest.raises(
        DataError, match=r"'a' has a missing value \(nan\) on line 4: .*EMPTY; it is"
    ):
        read_series_csv(str(only))


def test_interpolate_fills_linearly_per_column(tmp_path):
    df = read_series_csv(str(_csv(tmp_path, GAPS)), missing="interpolate")
    # a: leading gap from the nearest value, 2 → 8 across one hole; b: 1 → 4 and 4 → 5;
    # c: the trailing gap from the nearest value
    np.testing.assert_array_equal(df["a"], [2.0, 2.0, 5.0, 8.0, 10.0])
    np.testing.assert_array_equal(df["b"], [1.0, 2.5, 4.0, 4.5, 5.0])
    np.testing.assert_array_equal(df["c"], [10.0, 20.0, 30.0, 40.0, 40.0])
    assert len(df) == 5 and list(df["date"].dt.day) == [1, 2, 3, 4, 5]  # rows as they were


def test_ffill_carries_the_previous_value(tmp_path):
    df = read_series_csv(str(_csv(tmp_path, GAPS)), missing="ffill")
    np.testing.assert_array_equal(df["a"], [2.0, 2.0, 2.0, 8.0, 10.0])  # leading gap back-filled
    np.testing.assert_array_equal(df["b"], [1.0, 1.0, 4.0, 4.0, 5.0])
    np.testing.assert_array_equal(df["c"], [10.0, 20.0, 30.0, 40.0, 40.0])


@pytest.mark.parametrize("missing", ["error", "interpolate", "ffill"])
def test_text_and_infinity_stay_errors_in_every_mode(tmp_path, missing):
    text = _csv(tmp_path, GAPS.replace("2020-01-04,8,", "2020-01-04,eight,"), "text.csv")
    with pytest.raises(DataError) as info:
        read_series_csv(str(text), missing=missing)
    assert "column 'a' has the non-numeric value 'eight' on line 6" in str(info.value)
    inf = _csv(tmp_path, GAPS.replace("2020-01-04,8,", "2020-01-04,-inf,"), "inf.csv")
    with pytest.raises(DataError, match="column 'a' has the infinite value '-inf' on line 6"):
        read_series_csv(str(inf), missing=missing)


def test_a_column_without_any_number_cannot_be_filled(tmp_path):
    path = _csv(tmp_path, "date,a,b\n2020-01-01,1,\n2020-01-02,2,NaN\n")
    with pytest.raises(DataError, match="column 'b' has no number at all"):
        read_series_csv(str(path), missing="interpolate")


def test_check_data_logs_the_filled_cells_and_datasets_fill_alike(
    tmp_path, tiny_args, synthetic_csv, caplog
):
    path = synthetic_csv(tmp_path, n_rows=60, n_cols=3)
    frame = pd.read_csv(path)
    frame.loc[[5, 6], "x1"] = np.nan
    frame.loc[40, "y"] = np.nan
    frame.to_csv(path, index=False)
    argv = dict(data="custom", root_path=str(tmp_path), data_path=path.name, target="y")
    argv.update(seq_len=8, label_len=4, pred_len=4)
    with pytest.raises(DataError, match="3 cells are missing in all"):
        check_data(parse_args(tiny_args(tmp_path, **argv)))
    args = parse_args(tiny_args(tmp_path, **argv, missing="interpolate"))
    with caplog.at_level("INFO", logger="tsdiff"):
        resolve_dimensions(args)
    assert f"--missing interpolate filled 3 cells of {path}: 'y' 1, 'x1' 2" in caplog.text
    expected = frame[["x1", "x2", "y"]].interpolate(method="linear", limit_direction="both")
    dataset, _ = data_provider(args, "train")
    raw = dataset.inverse_transform(dataset.data_x)  # rows 0..41 of the train split
    np.testing.assert_allclose(raw, expected.to_numpy()[: len(raw)], rtol=1e-5)
    assert np.isfinite(dataset.data_x).all()


# ---- loaders --------------------------------------------------------------------------------


def _args(tiny_args, tmp_path, **overrides):
    args = parse_args(tiny_args(tmp_path, **overrides))
    resolve_dimensions(args)
    return args


def test_test_loader_keeps_every_window_in_order(tiny_args, tmp_path):
    args = _args(tiny_args, tmp_path, batch_size=64)
    dataset, loader = data_provider(args, "test")
    assert len(dataset) == 2785 and 2785 % 64 != 0
    sizes, firsts = [], []
    for x, _, _, _ in loader:
        sizes.append(x.shape[0])
        firsts.append(x[:, 0, :])
    assert sum(sizes) == len(dataset)
    assert sizes[-1] == 2785 % 64
    firsts = torch.cat(firsts).numpy()
    np.testing.assert_array_equal(firsts, dataset.data_x[: len(dataset)])

    _, val_loader = data_provider(args, "val")
    assert sum(b[0].shape[0] for b in val_loader) == 2880 - 96 + 1


def test_train_loader_is_shuffled(tiny_args, tmp_path):
    args = _args(tiny_args, tmp_path, batch_size=64)
    dataset, loader = data_provider(args, "train")
    in_order = np.stack([dataset[i][0][0] for i in range(64)])

    def first_batch(seed):
        torch.manual_seed(seed)
        return next(iter(loader))[0][:, 0, :].numpy()

    a, b, a_again = first_batch(0), first_batch(1), first_batch(0)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, in_order)
    np.testing.assert_array_equal(a, a_again)
    # the rows are still real windows: each batch row's first step is a row of the data
    rows = {tuple(r) for r in dataset.data_x[: len(dataset)]}
    assert all(tuple(r) in rows for r in a)


# ---- dimensions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "dims"), [("M", (7, 7, 7)), ("MS", (7, 7, 1)), ("S", (1, 1, 1))]
)
def test_resolve_dimensions_etth1(tiny_args, tmp_path, features, dims):
    args = _args(tiny_args, tmp_path, features=features)
    assert (args.enc_in, args.dec_in, args.c_out) == dims


@pytest.mark.parametrize(
    ("features", "dims"), [("M", (5, 5, 5)), ("MS", (5, 5, 1)), ("S", (1, 1, 1))]
)
def test_resolve_dimensions_custom(tiny_args, tmp_path, synthetic_csv, features, dims):
    path = synthetic_csv(tmp_path, n_rows=50, n_cols=5)
    args = _args(
        tiny_args,
        tmp_path,
        data="custom",
        root_path=str(path.parent),
        data_path=path.name,
        target="y",
        features=features,
        seq_len=8,
        label_len=4,
        pred_len=4,
    )
    assert (args.enc_in, args.dec_in, args.c_out) == dims


def test_contradicting_enc_in_names_both_numbers(tiny_args, tmp_path):
    args = parse_args(tiny_args(tmp_path, enc_in=21))
    with pytest.raises(DataError) as info:
        resolve_dimensions(args)
    message = str(info.value)
    assert "--enc_in 21" in message and "7" in message
    # an agreeing value is accepted
    ok = _args(tiny_args, tmp_path, enc_in=7, c_out=7)
    assert ok.enc_in == 7
