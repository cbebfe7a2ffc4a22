"""data_provider/: TSLib's split borders, window counts, train-only scaling, loaders, dimensions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from data_provider.data_factory import data_provider, resolve_dimensions
from data_provider.data_loader import (
    DataError,
    Dataset_Custom,
    Dataset_ETT_hour,
    Dataset_ETT_minute,
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
    with pytest.raises(DataError, match=r"val split has 11 rows .* seq_len \+ pred_len = 8 \+ 4"):
        _custom(path, "train", size=(8, 4, 4))


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
