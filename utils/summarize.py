"""One table of every run under a results folder.

Usage::

    python -m utils.summarize [RESULTS_DIR] [--format markdown|csv|latex] [--sort COLUMN]
    python path/to/utils/summarize.py [RESULTS_DIR] ...      # from any folder
    python path/to/run.py --summarize [RESULTS_DIR]          # the same table

RESULTS_DIR defaults to ./results/ where the current folder has one (run.py writes there), else
the repository's own results/.

A run folder is any folder (at any depth) holding ``metrics.json`` (a ``diffusion_forecast``
run: point and probabilistic metrics, sampler, baselines) or only ``metrics.npy`` (a
``long_term_forecast`` run: ``[mae, mse, rmse, mape, mspe]``, so only MSE and MAE are filled).
Model, data and horizon come from the folder name (the TSLib setting
``<task>_<model_id>_<model>_<data>[_<file stem>]_ft<features>_sl<L>_ll<l>_pl<H>_...``); the data
column shows the file's stem where the name has one (``custom_weather`` → ``weather``), and for
older ``custom`` names without it the stem of ``metrics.json``'s ``data_path``.
Metrics are those of ``metrics.json``: normalised units, except CRPS_norm (original units).

``collect(results_dir) -> list[dict]`` and ``render(rows, fmt) -> str`` are the library API.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The table's columns, in order.
COLUMNS: tuple[str, ...] = (
    "setting",
    "model",
    "data",
    "horizon",
    "sampler",
    "steps",
    "samples",
    "MSE",
    "MAE",
    "CRPS",
    "CRPS_norm",
    "cov50",
    "cov90",
    "sharp90",
    "crps_itr",
    "crps_itr_gauss",
)
FORMATS = ("markdown", "csv", "latex")
#: Row names of the two baselines that every diffusion_forecast run scores.
BASELINE_NAMES = {"itransformer": "iTransformer", "itransformer_gaussian": "iTransformer+Gaussian"}
_METRIC_KEYS = (
    ("MSE", "mse"), ("MAE", "mae"), ("CRPS", "crps"), ("CRPS_norm", "crps_norm"),
    ("cov50", "coverage_50"), ("cov90", "coverage_90"), ("sharp90", "sharpness_90"),
)  # fmt: skip


_MODELS = ("iTransformerDiffusionDirect", "iTransformerDiffusion", "iTransformer")
#: run.py's --data choices: a setting's data part is one of them, then maybe the file's stem.
_DATA = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "custom")
_TAIL = (
    r"_(?:(?P<data>" + "|".join(_DATA) + r")(?:_(?P<stem>.+?))?|(?P<other>.+?))"
    r"_ft(?P<features>MS|M|S)"
    r"_sl(?P<seq_len>\d+)_ll(?P<label_len>\d+)_pl(?P<pred_len>\d+)(?:_|$)"
)
_SETTING_PATTERNS = (
    # a known model name; the model_id may then contain underscores
    re.compile(
        r"^(?P<task>.+?_forecast)_(?P<model_id>.*)_(?P<model>" + "|".join(_MODELS) + ")" + _TAIL
    ),
    # any model name, a model_id without underscores
    re.compile(r"^(?P<task>.+?_forecast)_(?P<model_id>[^_]*)_(?P<model>[^_]+)" + _TAIL),
)


def parse_setting(setting: str) -> dict[str, str | int | None] | None:
    """``{task, model_id, model, data, stem, features, seq_len, label_len, pred_len}`` or None;
    ``stem``: the data file's stem where the name has one after ``data``, else None."""
    for pattern in _SETTING_PATTERNS:
        m = pattern.match(setting)
        if m:
            out: dict[str, str | int | None] = m.groupdict()
            other = out.pop("other")
            if other is not None:
                out["data"] = other
            for key in ("seq_len", "label_len", "pred_len"):
                out[key] = int(out[key])
            return out
    return None


def default_results_dir() -> str:
    """./results/ where the current folder has one, else the repository's results/."""
    here = Path("results")
    return str(here) if here.is_dir() else str(REPO_ROOT / "results")


def _float(value) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _row(folder: Path, results_dir: Path) -> dict:
    setting = folder.name
    parsed = parse_setting(setting) or {}
    row: dict = dict.fromkeys(COLUMNS)
    row["setting"] = setting
    row["path"] = str(folder.relative_to(results_dir)) if folder != results_dir else "."
    row["model"] = parsed.get("model")
    row["data"] = parsed.get("stem") or parsed.get("data")
    row["horizon"] = parsed.get("pred_len")
    json_path = folder / "metrics.json"
    if json_path.is_file():
        with open(json_path) as f:
            m = json.load(f)
        row["task"] = parsed.get("task", "diffusion_forecast")
        row["model"] = m.get("model") or row["model"]
        data_path = m.get("data_path")
        if data_path and (row["data"] in (None, "custom")):
            row["data"] = Path(data_path).stem
        if row["horizon"] is None and m.get("pred_len") is not None:
            row["horizon"] = int(m["pred_len"])
        row["sampler"] = m.get("sampler")
        row["steps"] = m.get("sampling_steps")
        row["samples"] = m.get("n_samples")
        for col, key in _METRIC_KEYS:
            row[col] = _float(m.get(key))
        baselines = m.get("baselines") or {}
        row["baselines"] = baselines
        row["crps_itr"] = _float((baselines.get("itransformer") or {}).get("crps"))
        row["crps_itr_gauss"] = _float((baselines.get("itransformer_gaussian") or {}).get("crps"))
    else:  # long_term_forecast: [mae, mse, rmse, mape, mspe]
        values = np.load(folder / "metrics.npy").reshape(-1)
        row["task"] = parsed.get("task", "long_term_forecast")
        row["MAE"] = float(values[0])
        row["MSE"] = float(values[1])
    return row


def collect(results_dir: str | os.PathLike = "./results/") -> list[dict]:
    """One dict per run folder under ``results_dir``, sorted by setting.

    Keys: every name in :data:`COLUMNS` (None where a run has no such value) plus ``task`` and
    ``path`` (relative to ``results_dir``). A missing folder gives an empty list.
    """
    root = Path(results_dir)
    if not root.is_dir():
        return []
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "metrics.json" in filenames or "metrics.npy" in filenames:
            rows.append(_row(Path(dirpath), root))
    return sorted(rows, key=lambda r: (r["setting"], r["path"]))


def with_baselines(rows: Sequence[dict]) -> list[dict]:
    """The rows plus one row per baseline of every diffusion run, with all its metrics.

    Runs that share a backbone (both diffusion models trained with the same stage-1 settings
    and seed) score identical baselines; such duplicates are kept once.
    """
    out, seen = [], set()
    for row in rows:
        out.append(row)
        for key, name in BASELINE_NAMES.items():
            metrics = (row.get("baselines") or {}).get(key)
            if not metrics:
                continue
            extra = {**dict.fromkeys(COLUMNS), "setting": row["setting"], "path": row.get("path")}
            extra.update(model=name, data=row["data"], horizon=row["horizon"], task=row.get("task"))
            for col, k in _METRIC_KEYS:
                extra[col] = _float(metrics.get(k))
            identity = (name, row["data"], row["horizon"], *(extra[c] for c, _ in _METRIC_KEYS))
            if identity not in seen:
                seen.add(identity)
                out.append(extra)
    return out


def sort_rows(rows: Sequence[dict], column: str) -> list[dict]:
    """Rows sorted on ``column`` (case-insensitive name), ascending, blanks last."""
    column = _column(column)

    def key(row):
        v = row.get(column)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return (2, 0, "")
        if isinstance(v, (int, float)):
            return (0, v, "")
        return (1, 0, str(v))

    return sorted(rows, key=key)


def _column(name: str) -> str:
    for col in COLUMNS:
        if col.lower() == name.lower():
            return col
    raise ValueError(f"unknown column {name!r}; choose from {', '.join(COLUMNS)}")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _markdown(table: list[list[str]]) -> str:
    n = len(table[0])
    numeric = [
        all(_looks_numeric(r[j]) for r in table[1:] if r[j]) and any(r[j] for r in table[1:])
        for j in range(n)
    ]
    widths = [max(3, *(len(r[j].replace("|", r"\|")) for r in table)) for j in range(n)]

    def line(cells):
        out = []
        for j, c in enumerate(cells):
            c = c.replace("|", r"\|")
            out.append(c.rjust(widths[j]) if numeric[j] else c.ljust(widths[j]))
        return "| " + " | ".join(out) + " |"

    sep = [("-" * (w - 1) + ":") if numeric[j] else "-" * w for j, w in enumerate(widths)]
    return "\n".join([line(table[0]), "| " + " | ".join(sep) + " |", *map(line, table[1:])])


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex(table: list[list[str]]) -> str:
    text = ("setting", "model", "data", "sampler")
    align = "".join("l" if name in text else "r" for name in table[0])
    lines = [
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in table[0]) + r" \\",
        r"\midrule",
        *(" & ".join(latex_escape(c) for c in r) + r" \\" for r in table[1:]),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines)


def render(rows: Sequence[dict], fmt: str = "markdown", columns: Sequence[str] = COLUMNS) -> str:
    """The rows as one table: ``markdown`` (GitHub pipe table), ``csv`` or ``latex`` (booktabs).

    Floats have 4 decimals; missing values are blank. ``columns``: a subset of COLUMNS.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    columns = [_column(c) for c in columns]
    table = [list(columns)] + [[_cell(r.get(c)) for c in columns] for r in rows]
    if fmt == "markdown":
        return _markdown(table)
    if fmt == "latex":
        return _latex(table)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(table)
    return buf.getvalue().rstrip("\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m utils.summarize",
        description="Print one table of every run (folders with metrics.json or metrics.npy).",
    )
    p.add_argument(
        "results_dir",
        nargs="?",
        default=None,
        help="results folder (default: ./results/ where it exists, else the repository's)",
    )
    p.add_argument("--format", default="markdown", choices=FORMATS, help="table format")
    p.add_argument(
        "--sort",
        default="setting",
        type=str,
        metavar="COLUMN",
        help=f"column to sort on, ascending (one of: {', '.join(COLUMNS)})",
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        help="add a row for each baseline (iTransformer, iTransformer+Gaussian) of every run",
    )
    p.add_argument(
        "--columns",
        default=",".join(COLUMNS),
        help="comma-separated columns to show, in order (default: all)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _column(args.sort)
        columns = [_column(c.strip()) for c in args.columns.split(",") if c.strip()]
    except ValueError as e:
        parser.error(str(e))
    if args.results_dir is None:
        args.results_dir = default_results_dir()
    if not os.path.isdir(args.results_dir):
        print(f"no results folder at {args.results_dir}", file=sys.stderr)
        return 1
    rows = collect(args.results_dir)
    if not rows:
        print(
            f"no run found under {args.results_dir} (no folder with metrics.json or metrics.npy)",
            file=sys.stderr,
        )
        return 1
    if args.baselines:
        rows = with_baselines(rows)
    print(render(sort_rows(rows, args.sort), args.format, columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
