"""Memory benchmark on wide data: peak resident memory of a test-only evaluation.

Writes a synthetic hourly CSV as wide as ECL (321 variates by default; daily sines with random
phases plus noise, the last column named OT) into a working folder, trains the quickstart-sized
iTransformerDiffusion on it for a token schedule (--stage1_epochs / --stage2_epochs, 1 each by
default: the weights do not change the memory a run needs), then evaluates the checkpoint with
``run.py --is_training 0 --n_samples 100`` in a child process and prints that process's peak
resident set size, as ``/usr/bin/time -v`` would (the evaluation includes the spread
calibration on the validation windows, the sampling, the metrics and the figures).
The last line is ``peak_rss_gib: <GiB>``.

    python scripts/benchmark_memory.py                     # ~5 minutes on a 2-core CPU
    python scripts/benchmark_memory.py --workdir /tmp/wide   # keeps the CSV, checkpoint and logs
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variates", type=int, default=321, help="columns of the CSV (ECL: 321)")
    p.add_argument("--rows", type=int, default=1500, help="hourly rows (1500: 205 test windows)")
    p.add_argument("--n_samples", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--sampling_steps", type=int, default=3, help="DDIM steps (memory: any)")
    p.add_argument("--stage1_epochs", type=int, default=1)
    p.add_argument("--stage2_epochs", type=int, default=1)
    p.add_argument("--workdir", help="folder for the CSV and the run's outputs, kept afterwards "
                   "(default: a temporary folder, removed)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="of the synthetic data")
    return p.parse_args()


def write_csv(path: str, rows: int, variates: int, seed: int) -> None:
    """Daily sines with random phases plus Gaussian noise, TSLib's custom layout (date, ..., OT)."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]  # (rows, 1)
    phase = rng.uniform(0.0, 2 * np.pi, variates)  # (variates,)
    x = np.sin(2 * np.pi * t / 24 + phase) + 0.3 * rng.standard_normal((rows, variates))
    frame = pd.DataFrame(x, columns=[f"v{i}" for i in range(variates - 1)] + ["OT"])
    dates = pd.date_range("2020-01-01", periods=rows, freq="h")
    frame.insert(0, "date", dates.strftime("%Y-%m-%d %H:%M:%S"))
    frame.to_csv(path, index=False)


def run_args(opts, workdir: str) -> list[str]:
    """run.py's arguments: the quickstart's model on the custom CSV, every path in ``workdir``."""
    return [
        "--task_name", "diffusion_forecast", "--model", "iTransformerDiffusion",
        "--data", "custom", "--root_path", workdir, "--data_path", "wide.csv",
        "--features", "M", "--seq_len", "96", "--label_len", "48", "--pred_len", "96",
        "--e_layers", "2", "--d_model", "128", "--d_ff", "128", "--n_heads", "8",
        "--unet_channels", "16,32,64", "--cond_dim", "64",
        "--stage1_epochs", str(opts.stage1_epochs), "--stage2_epochs", str(opts.stage2_epochs),
        "--batch_size", str(opts.batch_size), "--num_workers", "0",
        "--n_samples", str(opts.n_samples), "--sampler", "ddim",
        "--sampling_steps", str(opts.sampling_steps), "--model_id", "wide",
        "--checkpoints", os.path.join(workdir, "checkpoints"),
        "--results", os.path.join(workdir, "results"),
        "--test_results", os.path.join(workdir, "test_results"),
        "--result_file", os.path.join(workdir, "result.txt"),
    ]  # fmt: skip


def run_child(argv: list[str], log_path: str) -> tuple[int, float]:
    """Runs ``python run.py argv`` with its output in ``log_path`` → (peak RSS in KiB, seconds)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-u", "run.py", *argv], cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not its siblings'
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        sys.exit(f"run.py exited with {child.returncode}; the end of {log_path}:\n{tail}")
    return usage.ru_maxrss, seconds  # Linux reports ru_maxrss in KiB


def summary(log_path: str) -> list[str]:
    """The evaluation's table and its sampling line, from run.py's output."""
    with open(log_path) as log:
        lines = log.read().splitlines()
    keep = [i for i, line in enumerate(lines) if line.lstrip().startswith("mse ")]
    table = lines[keep[-1] : keep[-1] + 4] if keep else []
    sampling = [line for line in lines if re.search(r"s sampling", line)]
    return table + sampling[-1:]


def main() -> None:
    opts = parse()
    temporary = opts.workdir is None
    workdir = tempfile.mkdtemp(prefix="wide_") if temporary else opts.workdir
    os.makedirs(workdir, exist_ok=True)
    try:
        write_csv(os.path.join(workdir, "wide.csv"), opts.rows, opts.variates, opts.seed)
        print(f"synthetic CSV: {opts.rows} rows x {opts.variates} variates in {workdir}")
        argv = run_args(opts, workdir)
        train_rss, train_s = run_child([*argv, "--is_training", "1"], f"{workdir}/train.log")
        print(f"training ({opts.stage1_epochs}+{opts.stage2_epochs} epochs): {train_s:.1f} s, "
              f"peak {train_rss / 2**20:.2f} GiB")  # fmt: skip
        eval_rss, eval_s = run_child([*argv, "--is_training", "0"], f"{workdir}/eval.log")
        print("\n".join(summary(f"{workdir}/eval.log")))
        print(f"evaluation (--is_training 0, {opts.n_samples} samples, batch {opts.batch_size}): "
              f"{eval_s:.1f} s, peak resident memory {eval_rss} KB")  # fmt: skip
        print(f"peak_rss_gib: {eval_rss / 2**20:.2f}")
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
