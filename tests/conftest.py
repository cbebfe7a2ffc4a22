"""Shared fixtures: the repository root, a tiny CLI argv for ETTh1, and synthetic CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
ETT_DIR = REPO_ROOT / "dataset" / "ETT-small"

# A long_term_forecast run small enough for a 2-core machine: one epoch of a 16-wide model.
TINY_DEFAULTS: dict[str, object] = {
    "task_name": "long_term_forecast",
    "is_training": 1,
    "model_id": "test",
    "model": "iTransformer",
    "data": "ETTh1",
    "data_path": "ETTh1.csv",
    "features": "M",
    "seq_len": 96,
    "label_len": 48,
    "pred_len": 96,
    "d_model": 16,
    "d_ff": 16,
    "e_layers": 1,
    "n_heads": 2,
    "num_workers": 0,
    "train_epochs": 1,
    "batch_size": 64,
    "des": "test",
}


def make_tiny_args(tmp_path: Path, **overrides: object) -> list[str]:
    """argv for a tiny run on ./dataset/ETT-small/ETTh1.csv with every output under tmp_path.

    ``overrides`` replace or add flags (``d_model=32`` → ``--d_model 32``); ``True`` adds a bare
    flag (``inverse=True`` → ``--inverse``); ``None`` or ``False`` removes the flag.
    """
    tmp_path = Path(tmp_path)
    values: dict[str, object] = {
        **TINY_DEFAULTS,
        "root_path": str(ETT_DIR) + "/",
        "checkpoints": str(tmp_path / "checkpoints"),
        "results": str(tmp_path / "results"),
        "test_results": str(tmp_path / "test_results"),
        "result_file": str(tmp_path / "result_long_term_forecast.txt"),
    }
    values.update(overrides)
    argv: list[str] = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(f"--{name}")
        else:
            argv += [f"--{name}", str(value)]
    return argv


def write_synthetic_csv(
    tmp_path: Path,
    n_rows: int = 214,
    n_cols: int = 3,
    freq: str = "D",
    target: str = "y",
    name: str = "synthetic.csv",
    seed: int = 0,
) -> Path:
    """CSV with a ``date`` column then ``n_cols`` numeric columns: the target first, then x1...

    The target comes first so that moving it last (as ``custom`` does) is visible; every column
    has its own mean and scale so that standardisation is not the identity.
    """
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2020-01-01", periods=n_rows, freq=freq)
    names = [target] + [f"x{i}" for i in range(1, n_cols)]
    data = {"date": dates.strftime("%Y-%m-%d %H:%M:%S")}
    for j, col in enumerate(names):
        data[col] = 10.0 * (j + 1) + (j + 2) * rng.standard_normal(n_rows)
    path = Path(tmp_path) / name
    pd.DataFrame(data).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a small shared machine, OpenMP threads competing with other
    processes for the cores slow tiny models down tenfold. Subprocesses get OMP_NUM_THREADS=1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_args():
    """The ``make_tiny_args(tmp_path, **overrides) -> list[str]`` helper."""
    return make_tiny_args


@pytest.fixture(scope="session")
def synthetic_csv():
    """The ``write_synthetic_csv(tmp_path, n_rows=, n_cols=, freq=, target=)`` factory."""
    return write_synthetic_csv
