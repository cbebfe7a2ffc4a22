"""TSLib's benchmark datasets: ETT hourly, ETT minutely and any ``custom`` CSV.

Every split is a stride-1 sliding window over the rows of one CSV; a window yields
``(seq_x, seq_y, seq_x_mark, seq_y_mark)`` with shapes (L, N), (label_len + H, N), (L, M),
(label_len + H, M). The scaler is fitted on the training rows only. Splits follow TSLib exactly:
ETT hourly 12/4/4 months of 30 days, ETT minutely the same ×4, ``custom`` 7:1:2, and the val and
test splits start ``seq_len`` rows early so that their first window predicts their first row.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler
from torch.utils.data import Dataset

from utils.timefeatures import calendar_columns, time_features

SPLITS = {"train": 0, "val": 1, "test": 2}


class DataError(ValueError):
    """A problem with the user's data, reported in one sentence naming the culprit."""


def read_series_csv(path: str, target: str | None = None) -> pd.DataFrame:
    """Read a CSV whose first column is ``date`` and whose other columns are numeric.

    Raises DataError naming the file, the column and the line for every problem a user can fix.
    """
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder, not a CSV file (check --data_path)")
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path} (check --root_path and --data_path)")
    try:
        df = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        reason = " ".join(str(e).split())  # one line, whatever the parser says
        raise DataError(f"cannot read {path} as CSV: {reason}") from e
    if "date" not in df.columns:
        raise DataError(f"{path} has no 'date' column; its columns are {list(df.columns)}")
    if target is not None and target not in df.columns:
        raise DataError(
            f"target column {target!r} (--target) is not in {path}; "
            f"its columns are {list(df.columns)}"
        )
    _check_numeric(df, path)
    dates = pd.to_datetime(df["date"], errors="coerce")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise DataError(
            f"{path}: cannot parse date {df['date'].iloc[row]!r} on line {row + 2} (column 'date')"
        )
    df["date"] = dates
    return df


def _check_numeric(df: pd.DataFrame, path: str) -> None:
    for col in df.columns:
        if col == "date":
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: column {col!r} has a non-numeric, NaN or infinite value "
                f"{str(df[col].iloc[row])!r} on line {row + 2}"
            )
        df[col] = values.astype(float)


class ForecastDataset(Dataset):
    """Sliding windows over one split of one CSV. Subclasses define the split borders."""

    minute_marks = False  # timeenc=0: add TSLib's minute // 15 column whatever --freq says

    def __init__(
        self,
        root_path: str,
        flag: str = "train",
        size: tuple[int, int, int] | None = None,
        features: str = "S",
        data_path: str = "ETTh1.csv",
        target: str = "OT",
        scale: bool = True,
        timeenc: int = 0,
        freq: str = "h",
    ):
        if flag not in SPLITS:
            raise ValueError(f"flag must be one of {list(SPLITS)}, got {flag!r}")
        self.seq_len, self.label_len, self.pred_len = size or (96, 48, 96)
        self.flag, self.features, self.target = flag, features, target
        self.scale, self.timeenc, self.freq = scale, timeenc, freq
        self.path = os.path.join(root_path, data_path)
        self._read_data()

    # ---- subclass hook -------------------------------------------------------------------
    def borders(self, n_rows: int) -> tuple[list[int], list[int]]:
        raise NotImplementedError

    # ---- reading -------------------------------------------------------------------------
    def _ordered_frame(self) -> pd.DataFrame:
        needs_target = self.features in ("S", "MS")
        return read_series_csv(self.path, self.target if needs_target else None)

    def _read_data(self) -> None:
        df_raw = self._ordered_frame()
        border1s, border2s = self.borders(len(df_raw))
        self._check_split_lengths(border1s, border2s, len(df_raw))
        split = SPLITS[self.flag]
        border1, border2 = border1s[split], border2s[split]

        cols = [self.target] if self.features == "S" else list(df_raw.columns[1:])
        df_data = df_raw[cols]
        self.columns = cols
        self.scaler = StandardScaler()
        if self.scale:
            self.scaler.fit(df_data.iloc[border1s[0] : border2s[0]].to_numpy())
            data = self.scaler.transform(df_data.to_numpy())
        else:
            data = df_data.to_numpy()

        stamps = df_raw["date"].iloc[border1:border2]
        marks = self.time_marks(stamps)
        self.all_dates = pd.DatetimeIndex(df_raw["date"])
        self.dates = pd.DatetimeIndex(stamps)
        self.data_x = data[border1:border2].astype(np.float32)  # (rows, N)
        self.data_y = self.data_x
        self.data_stamp = marks.astype(np.float32)
        self.full_data = data.astype(np.float32)  # every row, scaled: for --do_predict

    def time_marks(self, stamps) -> np.ndarray:
        """(rows, M) time features of the given timestamps, as the windows carry them."""
        if self.timeenc == 1:
            return time_features(stamps, self.freq).T
        return calendar_columns(stamps, self.freq, self.minute_marks)  # (rows, 4 or 5)

    def future_input(self) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
        """The last ``seq_len`` rows of the CSV → (x (L, N), x_mark (L, M), the H future dates)."""
        x = self.full_data[-self.seq_len :]
        marks = self.time_marks(self.all_dates[-self.seq_len :]).astype(np.float32)
        return x, marks, future_dates(self.all_dates, self.pred_len)

    def _check_split_lengths(self, b1: list[int], b2: list[int], n_rows: int) -> None:
        need = self.seq_len + self.pred_len
        for name, i in SPLITS.items():
            have = b2[i] - max(b1[i], 0)
            if b1[i] < 0 or have < need:
                raise DataError(
                    f"{self.path} has {n_rows} rows: its {name} split has {max(have, 0)} rows "
                    f"but seq_len + pred_len = {self.seq_len} + {self.pred_len} = {need} are "
                    f"needed for one window; use a shorter --seq_len/--pred_len or more data"
                )

    # ---- windows -------------------------------------------------------------------------
    def __getitem__(self, index: int):
        s_begin = index
        s_end = s_begin + self.seq_len
        r_begin = s_end - self.label_len
        r_end = r_begin + self.label_len + self.pred_len
        return (
            self.data_x[s_begin:s_end],  # (L, N)
            self.data_y[r_begin:r_end],  # (label_len + H, N)
            self.data_stamp[s_begin:s_end],  # (L, M)
            self.data_stamp[r_begin:r_end],  # (label_len + H, M)
        )

    def __len__(self) -> int:
        return len(self.data_x) - self.seq_len - self.pred_len + 1

    def inverse_transform(self, data: np.ndarray) -> np.ndarray:
        """Undo the scaling of any array whose last axis holds the last k columns (k = N for
        M and S, k = 1 for the MS target)."""
        k = data.shape[-1]
        return np.asarray(data) * self.scaler.scale_[-k:] + self.scaler.mean_[-k:]


class Dataset_ETT_hour(ForecastDataset):
    def borders(self, n_rows: int) -> tuple[list[int], list[int]]:
        month = 30 * 24
        border1s = [0, 12 * month - self.seq_len, 12 * month + 4 * month - self.seq_len]
        border2s = [12 * month, 12 * month + 4 * month, 12 * month + 8 * month]
        return border1s, border2s


class Dataset_ETT_minute(ForecastDataset):
    minute_marks = True

    def borders(self, n_rows: int) -> tuple[list[int], list[int]]:
        month = 30 * 24 * 4
        border1s = [0, 12 * month - self.seq_len, 12 * month + 4 * month - self.seq_len]
        border2s = [12 * month, 12 * month + 4 * month, 12 * month + 8 * month]
        return border1s, border2s


class Dataset_Custom(ForecastDataset):
    """Any CSV with a ``date`` column; the target is moved last; splits 7:1:2."""

    def _ordered_frame(self) -> pd.DataFrame:
        df = read_series_csv(self.path, self.target)
        cols = [c for c in df.columns if c not in ("date", self.target)]
        return df[["date", *cols, self.target]]

    def borders(self, n_rows: int) -> tuple[list[int], list[int]]:
        num_train = int(n_rows * 0.7)
        num_test = int(n_rows * 0.2)
        num_vali = n_rows - num_train - num_test
        border1s = [0, num_train - self.seq_len, n_rows - num_test - self.seq_len]
        border2s = [num_train, num_train + num_vali, n_rows]
        return border1s, border2s


def future_dates(dates: pd.DatetimeIndex, horizon: int) -> pd.DatetimeIndex:
    """``horizon`` timestamps after the last one, continuing the series' own frequency."""
    recent = dates[-min(len(dates), 100) :]
    freq = pd.DatetimeIndex(recent.values, freq="infer").freq if len(recent) >= 3 else None
    if freq is not None:
        return pd.date_range(dates[-1], periods=horizon + 1, freq=freq)[1:]
    step = pd.Series(dates[-min(len(dates), 100) :]).diff().median()  # irregular: typical step
    return pd.DatetimeIndex([dates[-1] + step * (i + 1) for i in range(horizon)])
