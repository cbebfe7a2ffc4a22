"""TSLib's benchmark datasets: ETT hourly, ETT minutely and any ``custom`` CSV.

Every split is a stride-1 sliding window over the rows of one CSV; a window yields
``(seq_x, seq_y, seq_x_mark, seq_y_mark)`` with shapes (L, N), (label_len + H, N), (L, M),
(label_len + H, M). The scaler is fitted on the training rows only. Splits follow TSLib exactly:
ETT hourly 12/4/4 months of 30 days, ETT minutely the same ×4, ``custom`` 7:1:2, and the val and
test splits start ``seq_len`` rows early so that their first window predicts their first row.
Empty and NaN cells are an error naming the first one, or are filled per column (``--missing
interpolate|ffill``); rows are never added or dropped.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler
from torch.utils.data import Dataset

from utils.timefeatures import calendar_columns, time_features

SPLITS = {"train": 0, "val": 1, "test": 2}
log = logging.getLogger("tsdiff")


class DataError(ValueError):
    """A problem with the user's data, reported in one sentence naming the culprit."""


#: ``--missing``: what to do with empty and NaN cells of the numeric columns.
MISSING_MODES = ("error", "interpolate", "ffill")
#: Cells that count as missing besides empty ones (pandas' own NaN spellings).
NA_TEXTS = frozenset(
    ("#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "+nan", "+NaN", "NAN")
)  # fmt: skip
_NA_LOWER = frozenset(t.lower() for t in NA_TEXTS)


def read_series_csv(
    path: str, target: str | None = None, missing: str = "error", report: bool = False
) -> pd.DataFrame:
    """Read a CSV whose first column is ``date`` and whose other columns are numeric.

    Empty and NaN cells of the numeric columns are an error (``missing="error"``) or are filled
    per column in row order: ``"interpolate"`` (linear, the ends from the nearest value) or
    ``"ffill"`` (forward fill, then back-fill a leading gap). Text and infinities are errors in
    every mode. ``report``: log how many cells were filled per column.

    Raises DataError naming the file, the column and the line for every problem a user can fix.
    """
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder, not a CSV file (check --data_path)")
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path} (check --root_path and --data_path)")
    try:
        df = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        reason = " ".join(str(e).split())  # one line, whatever the parser says
        raise DataError(f"cannot read {path} as CSV: {reason}") from e
    source = _Source(
        path,
        cells=lambda: pd.read_csv(path, dtype=str, keep_default_na=False),
        where=lambda row: f"on line {_line_of(path, len(df), row)}",
    )
    return _checked_series(df, source, target, missing, report)


def read_series_frame(
    frame: pd.DataFrame,
    target: str | None = None,
    missing: str = "error",
    report: bool = False,
    name: str = "the DataFrame",
) -> pd.DataFrame:
    """:func:`read_series_csv` for a DataFrame in memory: a ``date`` column (or a DatetimeIndex,
    which becomes it) and numeric columns, checked and filled exactly as a CSV's cells would be;
    messages name ``name`` and the row (0-based) instead of a file and a line. ``frame`` is not
    changed."""
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame or a CSV path, got {type(frame).__name__}")
    df = frame.copy()
    if "date" not in df.columns and isinstance(df.index, pd.DatetimeIndex):
        df = df.rename_axis("date").reset_index()
    df = df.reset_index(drop=True)
    df.columns = [str(c) for c in df.columns]

    def cells() -> pd.DataFrame:  # the cells as text, as a CSV would hold them
        return df.astype(object).map(lambda v: "" if v is None else str(v))

    source = _Source(name, cells=cells, where=lambda row: f"in row {row}")
    return _checked_series(df, source, target, missing, report)


class _Source:
    """Where a table came from, for messages: its name, its cells as text, where a row is."""

    def __init__(self, name: str, cells, where):
        self.name, self.cells, self.where = name, cells, where


def _checked_series(
    df: pd.DataFrame, source: _Source, target: str | None, missing: str, report: bool
) -> pd.DataFrame:
    """The checks and filling shared by CSV files and DataFrames; changes ``df`` in place."""
    path = source.name
    if "date" not in df.columns:
        raise DataError(f"{path} has no 'date' column; its columns are {list(df.columns)}")
    if target is not None and target not in df.columns:
        raise DataError(
            f"target column {target!r} (--target) is not in {path}; "
            f"its columns are {list(df.columns)}"
        )
    filled = _numeric_columns(df, source, missing)
    if report and filled:
        log.info(
            "--missing %s filled %d cells of %s: %s",
            missing, sum(filled.values()), path,
            ", ".join(f"{col!r} {n}" for col, n in filled.items()),
        )  # fmt: skip
    dates = pd.to_datetime(df["date"], errors="coerce")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise DataError(
            f"{path}: cannot parse date {df['date'].iloc[row]!r} {source.where(row)} "
            "(column 'date')"
        )
    df["date"] = dates
    return df


def _is_finite_numeric(column: pd.Series) -> bool:
    if not pd.api.types.is_numeric_dtype(column):
        return False
    return bool(np.isfinite(column.to_numpy(dtype=float, na_value=np.nan)).all())


def _numeric_columns(df: pd.DataFrame, source: _Source, missing: str) -> dict[str, int]:
    """Make every column but ``date`` float, filling missing cells as ``missing`` says.

    Returns ``{column: cells filled}`` for the columns that had any.
    """
    columns = [c for c in df.columns if c != "date"]
    suspects = [c for c in columns if not _is_finite_numeric(df[c])]
    for col in columns:
        if col not in suspects:
            df[col] = df[col].astype(float)
    if not suspects:
        return {}
    path = source.name
    # the cells as written: tells an empty cell from 'NaN' and from text
    raw = source.cells()
    if list(raw.columns) != list(df.columns) or len(raw) != len(df):  # cannot happen
        raise DataError(f"cannot read {path} as CSV: its rows cannot be read consistently")
    holes: dict[str, np.ndarray] = {}  # column → boolean mask of missing cells
    bad: list[tuple[int, int, str, str]] = []  # (row, column index, text, kind)
    for j, col in enumerate(columns):
        if col not in suspects:
            continue
        text = raw[col].str.strip()
        hole = (text == "") | text.str.lower().isin(_NA_LOWER)
        values = pd.to_numeric(text.where(~hole), errors="coerce")
        non_numeric = (~hole & values.isna()).to_numpy()
        infinite = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
        for kind, mask in (("non-numeric", non_numeric), ("infinite", infinite)):
            rows = np.flatnonzero(mask)
            bad += [(int(r), j, raw[col].iloc[r], kind) for r in rows[:1]]
            bad += [(-1, j, "", kind)] * (len(rows) - 1)  # counted, not shown
        if hole.any():
            holes[col] = hole.to_numpy()
        df[col] = values.astype(float)
    if bad:
        shown = min((b for b in bad if b[0] >= 0), key=lambda b: (b[0], b[1]))
        row, j, text, kind = shown
        more = f" ({len(bad)} cells in all are text or infinite)" if len(bad) > 1 else ""
        fix = (
            "only numbers, empty cells and NaN are allowed, and --missing fills only the "
            "empty and NaN cells"
            if kind == "non-numeric"
            else "replace it with a number, or empty the cell and choose --missing interpolate "
            "or --missing ffill"
        )
        raise DataError(
            f"{path}: column {columns[j]!r} has the {kind} value {text!r} "
            f"{source.where(row)}{more}; {fix}"
        )
    if not holes:
        return {}
    counts = {col: int(mask.sum()) for col, mask in holes.items()}
    if missing == "error":
        row, col = min(
            ((int(np.flatnonzero(mask)[0]), col) for col, mask in holes.items()),
            key=lambda rc: (rc[0], columns.index(rc[1])),
        )
        text = raw[col].iloc[row]
        cell = "the cell is EMPTY" if not text.strip() else f"the cell reads {text!r}"
        them = "them" if sum(counts.values()) > 1 else "it"
        raise DataError(
            f"{path}: column {col!r} has a missing value (nan) {source.where(row)}: {cell}; "
            f"{_count_text(counts)}; fill {them} with "
            "--missing interpolate (linear between the neighbouring rows) or --missing ffill "
            "(the previous row's value), or correct the file"
        )
    for col in holes:
        series = df[col]
        if series.isna().all():
            raise DataError(
                f"{path}: column {col!r} has no number at all (all {len(df)} cells are empty "
                f"or NaN), so --missing {missing} has nothing to fill it from; drop the column"
            )
        if missing == "interpolate":
            df[col] = series.interpolate(method="linear", limit_direction="both")
        else:
            df[col] = series.ffill().bfill()
    return counts


def _count_text(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if total == 1:
        return "it is the only missing cell"
    items = [f"{col!r} {n}" for col, n in counts.items()]
    if len(items) > 6:
        items = items[:6] + [f"{len(counts) - 6} more columns"]
    return f"{total} cells are missing in all ({', '.join(items)})"


def _line_of(path: str, n_rows: int, row: int) -> int:
    """1-based line of data row ``row`` in the file (the header is line 1).

    pandas skips blank lines, so they are skipped here too; where the file's lines cannot be
    matched with its rows (quoted line breaks), row + 2.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [i for i, line in enumerate(f, 1) if line.strip()]
    except OSError:
        return row + 2
    if len(lines) != n_rows + 1:
        return row + 2
    return lines[row + 1]


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
        missing: str = "error",
    ):
        if flag not in SPLITS:
            raise ValueError(f"flag must be one of {list(SPLITS)}, got {flag!r}")
        self.seq_len, self.label_len, self.pred_len = size or (96, 48, 96)
        self.flag, self.features, self.target = flag, features, target
        self.scale, self.timeenc, self.freq = scale, timeenc, freq
        self.missing = missing
        self.path = os.path.join(root_path, data_path)
        self._read_data()

    # ---- subclass hooks ------------------------------------------------------------------
    @classmethod
    def split_borders(cls, n_rows: int, seq_len: int) -> tuple[list[int], list[int]]:
        """``([train, val, test] first rows, [train, val, test] ends)``; val and test start
        ``seq_len`` rows early so that their first window predicts their first row."""
        raise NotImplementedError

    @classmethod
    def split_rule(cls, seq_len: int, pred_len: int) -> str:
        """How the rows are split, in words, for error messages."""
        raise NotImplementedError

    @staticmethod
    def needs_target(features: str) -> bool:
        """Whether the CSV must have the --target column."""
        return features in ("S", "MS")

    def borders(self, n_rows: int) -> tuple[list[int], list[int]]:
        return self.split_borders(n_rows, self.seq_len)

    # ---- reading -------------------------------------------------------------------------
    def _ordered_frame(self) -> pd.DataFrame:
        target = self.target if self.needs_target(self.features) else None
        return read_series_csv(self.path, target, self.missing)

    def _read_data(self) -> None:
        df_raw = self._ordered_frame()
        border1s, border2s = self.borders(len(df_raw))
        self.check_split_lengths(self.path, len(df_raw), self.seq_len, self.pred_len)
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
        return self.marks_of(stamps, self.timeenc, self.freq)

    @classmethod
    def marks_of(cls, stamps, timeenc: int, freq: str) -> np.ndarray:
        """:meth:`time_marks` without a dataset: (rows, M) time features of ``stamps``."""
        if timeenc == 1:
            return time_features(stamps, freq).T
        return calendar_columns(stamps, freq, cls.minute_marks)  # (rows, 4 or 5)

    def future_input(self) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
        """The last ``seq_len`` rows of the CSV → (x (L, N), x_mark (L, M), the H future dates)."""
        x = self.full_data[-self.seq_len :]
        marks = self.time_marks(self.all_dates[-self.seq_len :]).astype(np.float32)
        return x, marks, future_dates(self.all_dates, self.pred_len)

    @classmethod
    def check_split_lengths(cls, path: str, n_rows: int, seq_len: int, pred_len: int) -> None:
        """Every split must hold at least one window of ``seq_len + pred_len`` rows."""
        b1, b2 = cls.split_borders(n_rows, seq_len)
        need = seq_len + pred_len
        for name, i in SPLITS.items():
            have = min(b2[i], n_rows) - max(b1[i], 0)
            if b1[i] < 0 or have < need:
                raise DataError(
                    f"{path} has {n_rows} rows: its {name} split has {max(have, 0)} rows "
                    f"but seq_len + pred_len = {seq_len} + {pred_len} = {need} are "
                    f"needed for one window ({cls.split_rule(seq_len, pred_len)}); "
                    "use a shorter --seq_len/--pred_len or more data"
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
    month = 30 * 24  # TSLib's ETT "month" of hourly rows

    @classmethod
    def split_borders(cls, n_rows: int, seq_len: int) -> tuple[list[int], list[int]]:
        month = cls.month
        border1s = [0, 12 * month - seq_len, 12 * month + 4 * month - seq_len]
        border2s = [12 * month, 12 * month + 4 * month, 12 * month + 8 * month]
        return border1s, border2s

    @classmethod
    def split_rule(cls, seq_len: int, pred_len: int) -> str:
        m = cls.month
        return (
            f"ETT data split at TSLib's fixed rows: train 1-{12 * m}, val {12 * m + 1}-"
            f"{16 * m}, test {16 * m + 1}-{20 * m}, val and test also using the seq_len rows "
            f"before them, so the file needs {20 * m} rows"
        )


class Dataset_ETT_minute(Dataset_ETT_hour):
    minute_marks = True
    month = 30 * 24 * 4


class Dataset_Custom(ForecastDataset):
    """Any CSV with a ``date`` column; the target is moved last; splits 7:1:2."""

    def _ordered_frame(self) -> pd.DataFrame:
        df = read_series_csv(self.path, self.target, self.missing)
        cols = [c for c in df.columns if c not in ("date", self.target)]
        return df[["date", *cols, self.target]]

    @staticmethod
    def needs_target(features: str) -> bool:
        return True  # the target is moved last whatever --features says

    @classmethod
    def split_borders(cls, n_rows: int, seq_len: int) -> tuple[list[int], list[int]]:
        num_train = int(n_rows * 0.7)
        num_test = int(n_rows * 0.2)
        num_vali = n_rows - num_train - num_test
        border1s = [0, num_train - seq_len, n_rows - num_test - seq_len]
        border2s = [num_train, num_train + num_vali, n_rows]
        return border1s, border2s

    @classmethod
    def split_rule(cls, seq_len: int, pred_len: int) -> str:
        return (
            "--data custom splits the n rows 7:1:2, train = int(0.7 n), test = int(0.2 n), "
            "val = the rest, and val and test also use the seq_len rows before them, so train "
            "needs seq_len + pred_len rows and val and test pred_len rows each; with these "
            f"lengths that takes at least {cls.min_rows(seq_len, pred_len)} rows"
        )

    @classmethod
    def min_rows(cls, seq_len: int, pred_len: int) -> int:
        """The fewest rows from which on every CSV length gives each split a window."""

        def fits(n: int) -> bool:
            b1, b2 = cls.split_borders(n, seq_len)
            return all(b1[i] >= 0 and b2[i] - b1[i] >= seq_len + pred_len for i in SPLITS.values())

        # val = n - int(0.7 n) - int(0.2 n) grows by one every 10 rows, with ups and downs in
        # between: the answer is the first n from which on ten lengths in a row fit
        n, run = 0, 0
        while run < 10:
            n += 1
            run = run + 1 if fits(n) else 0
        return n - 9


def future_dates(dates: pd.DatetimeIndex, horizon: int) -> pd.DatetimeIndex:
    """``horizon`` timestamps after the last one, continuing the series' own frequency."""
    recent = dates[-min(len(dates), 100) :]
    freq = pd.DatetimeIndex(recent.values, freq="infer").freq if len(recent) >= 3 else None
    if freq is not None:
        return pd.date_range(dates[-1], periods=horizon + 1, freq=freq)[1:]
    step = pd.Series(dates[-min(len(dates), 100) :]).diff().median()  # irregular: typical step
    return pd.DatetimeIndex([dates[-1] + step * (i + 1) for i in range(horizon)])
