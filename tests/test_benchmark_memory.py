"""scripts/benchmark_memory.py: the synthetic wide CSV and one small end-to-end run."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pandas as pd


def _module(repo_root):
    spec = importlib.util.spec_from_file_location(
        "benchmark_memory", repo_root / "scripts" / "benchmark_memory.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wide_csv_has_tslib_custom_layout(repo_root, tmp_path):
    """date first, OT last, hourly dates, the asked-for width, and a daily cycle in every
    column (each column's lag-24 autocorrelation is high, its lag-12 one negative)."""
    path = tmp_path / "wide.csv"
    _module(repo_root).write_csv(str(path), rows=480, variates=40, seed=0)
    frame = pd.read_csv(path)
    assert frame.shape == (480, 41)
    assert frame.columns[0] == "date" and frame.columns[-1] == "OT"
    steps = pd.to_datetime(frame["date"]).diff().dropna().unique()
    assert list(steps) == [pd.Timedelta(hours=1)]
    x = frame.iloc[:, 1:].to_numpy()
    x = (x - x.mean(0)) / x.std(0)

    def lag(k):
        return (x[k:] * x[:-k]).mean(0)

    assert (lag(24) > 0.7).all() and (lag(12) < -0.7).all()


def test_memory_benchmark_reports_the_evaluations_peak(repo_root, tmp_path):
    """A small run: training then a test-only evaluation of every test window (TSLib's custom
    split: 20% of the rows minus the horizon plus one), the model's and the baselines' rows,
    and a last line with the evaluation's peak, which agrees with the KB figure above it."""
    rows = 1000
    cmd = [sys.executable, "scripts/benchmark_memory.py", "--variates", "5", "--rows", str(rows),
           "--n_samples", "4", "--sampling_steps", "2", "--workdir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    windows = int(re.search(r"\((\d+) test windows, 4 samples, ddim 2 steps", out).group(1))
    assert windows == int(rows * 0.2) - 96 + 1
    for name in ("iTransformerDiffusion", "itransformer", "itransformer_gaussian"):
        assert re.search(rf"^{name}\s+\d", out, re.MULTILINE)
    kib = int(re.search(r"peak resident memory (\d+) KB", out).group(1))
    name, value = out.strip().splitlines()[-1].split(": ")
    assert name == "peak_rss_gib" and abs(float(value) - kib / 2**20) <= 0.005
    assert 50 * 2**10 < kib < 4 * 2**20  # more than the interpreter alone, far below 4 GiB
    assert (tmp_path / "wide.csv").exists() and list(tmp_path.glob("checkpoints/*/checkpoint.pth"))
