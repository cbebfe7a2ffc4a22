r"""The README's results table: the diffusion models and every baseline on ETTh1, ETTh2, ETTm1,
ETTm2, Weather and Exchange at horizon 96 and ILI at 24, with marginal and joint scores, and
for each dataset the better diffusion model against the best baseline with a 95% interval.

    python scripts/results_table.py --cpu                 # reduced CPU protocol (quickstart sizes)
    python scripts/results_table.py                       # full protocol (GPU): full-size denoiser
    python scripts/results_table.py --cpu --models iTransformerDiffusion --datasets ETTh1 ETTh2
    python scripts/results_table.py --cpu --no_run        # tables from the runs already there
    python scripts/results_table.py --cpu --evaluate      # re-evaluate their checkpoints
    python scripts/results_table.py --cpu --out results_table/copula \
        --run_flags "--marginal empirical"                # more run.py flags for every run

Runs go to ``--out`` (default ./results_table/, git-ignored); a run whose metrics.json exists is
reused unless ``--rerun``. "Best baseline" is chosen per dataset among the lookback-scaled
Gaussian and the residual quantiles on the validation CRPS of their fit (no test data); the
interval is a moving-block bootstrap over the test windows of the relative difference of the
per-window scores (``utils.metrics.block_bootstrap_ci``): a win is an interval below 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from utils.metrics import block_bootstrap_ci  # noqa: E402

RUNS = {  # name: (--data, root, file, seq_len, label_len, pred_len)
    "ETTh1": ("ETTh1", "ETT-small", "ETTh1.csv", 96, 48, 96),
    "ETTh2": ("ETTh2", "ETT-small", "ETTh2.csv", 96, 48, 96),
    "ETTm1": ("ETTm1", "ETT-small", "ETTm1.csv", 96, 48, 96),
    "ETTm2": ("ETTm2", "ETT-small", "ETTm2.csv", 96, 48, 96),
    "weather": ("custom", "weather", "weather.csv", 96, 48, 96),
    "exchange_rate": ("custom", "exchange_rate", "exchange_rate.csv", 96, 48, 96),
    "national_illness": ("custom", "illness", "national_illness.csv", 36, 18, 24),
}
MODELS = ("iTransformerDiffusion", "iTransformerDiffusionDirect")
CPU = ["--d_model", "128", "--d_ff", "128", "--unet_channels", "16,32,64", "--cond_dim", "64",
       "--stage1_epochs", "10", "--stage2_epochs", "10", "--batch_size", "64", "--n_samples",
       "50", "--sampler", "ddpm", "--sampling_steps", "10", "--des", "CPU"]  # fmt: skip
FULL = ["--d_model", "128", "--d_ff", "128", "--stage1_epochs", "30", "--stage2_epochs", "20",
        "--batch_size", "32", "--n_samples", "100", "--sampler", "ddim",
        "--sampling_steps", "50", "--des", "Full"]  # fmt: skip
NEW_BASELINES = ("scaled_gaussian", "residual_quantiles")
COLUMNS = ("MSE", "CRPS", "CRPS_fair", "CRPS_norm", "CRPS_sum", "energy", "variogram",
           "cov50", "cov90")  # fmt: skip
KEYS = ("mse", "crps", "crps_fair", "crps_norm", "crps_sum", "energy_score", "variogram_score",
        "coverage_50", "coverage_90")  # fmt: skip


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="reduced CPU protocol")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--datasets", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--out", default=os.path.join(REPO, "results_table"))
    p.add_argument("--rerun", action="store_true", help="redo runs that exist")
    p.add_argument("--no_run", action="store_true", help="only print the tables")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="re-evaluate the trained checkpoints (run.py --is_training 0): new scores and "
        "baselines without training again",
    )
    p.add_argument(
        "--run_flags",
        default="",
        help='more run.py flags for every run, e.g. "--marginal '
        'empirical" (with an --out of their own: the runs are named without them)',
    )
    return p.parse_args()


def run_folder(opts, model: str, name: str) -> str | None:
    """The results folder of one run (None if it has not run)."""
    root = os.path.join(opts.out, "results")
    if not os.path.isdir(root):
        return None
    _, _, file, seq, _, horizon = RUNS[name]
    prefix = f"diffusion_forecast_{file[:-4]}_{seq}_{horizon}_{model}_"
    for folder in sorted(os.listdir(root)):
        if folder.startswith(prefix) and os.path.isfile(os.path.join(root, folder, "metrics.json")):
            return os.path.join(root, folder)
    return None


def run(opts, model: str, name: str) -> None:
    data, root, file, seq, label, horizon = RUNS[name]
    training = "0" if opts.evaluate else "1"
    argv = [sys.executable, "-u", os.path.join(REPO, "run.py"),
            "--task_name", "diffusion_forecast", "--is_training", training, "--model", model,
            "--data", data, "--root_path", os.path.join(REPO, "dataset", root),
            "--data_path", file, "--features", "M", "--seq_len", str(seq),
            "--label_len", str(label), "--pred_len", str(horizon),
            "--model_id", f"{file[:-4]}_{seq}_{horizon}", *(CPU if opts.cpu else FULL),
            "--num_workers", "0", "--overwrite",
            "--checkpoints", os.path.join(opts.out, "checkpoints"),
            "--results", os.path.join(opts.out, "results"),
            "--test_results", os.path.join(opts.out, "test_results"),
            "--result_file", os.path.join(opts.out, "result_diffusion_forecast.txt"),
            *shlex.split(opts.run_flags)]  # fmt: skip
    print(f"== {model} on {name}", flush=True)
    subprocess.run(argv, check=True)


def load(folder: str) -> tuple[dict, dict]:
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    with np.load(os.path.join(folder, "window_scores.npz")) as scores:
        return metrics, dict(scores)


def score_table(results: dict) -> list[str]:
    """One row per dataset and method (each model, then the baselines of the first model's
    run: the runs share the backbone settings and seed, so their baselines agree)."""
    head = "| data | method | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|---|---|" + "---:|" * len(COLUMNS)]
    for name, runs in results.items():
        rows = [(model, m) for model, (m, _) in runs.items()]
        first = next(iter(runs.values()))[0]
        rows += list(first["baselines"].items())
        for method, m in rows:
            cells = [f"{m[k]:.4f}" if k in m else "–" for k in KEYS]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return lines


def win_table(results: dict) -> list[str]:
    """Per dataset: the better diffusion model (lower test CRPS) against the best new baseline
    (lower validation CRPS), relative difference of CRPS and energy score with 95% intervals."""
    lines = ["| data | model | best baseline (validation) | ΔCRPS [95% CI] | Δenergy [95% CI] "
             "| energy: beats every baseline |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, runs in results.items():
        model = min(runs, key=lambda k: runs[k][0]["crps"])
        metrics, scores = runs[model]
        val = metrics.get("baseline_val_crps") or {}
        best = min(NEW_BASELINES, key=lambda b: val.get(b, metrics["baselines"][b]["crps"]))
        cells = []
        for key in ("crps", "energy_score"):
            rel, low, high = block_bootstrap_ci(scores[f"{model}/{key}"], scores[f"{best}/{key}"])
            win = "win" if high < 0 else ("loss" if low > 0 else "tie")
            cells.append(f"{100 * rel:+.1f}% [{100 * low:+.1f}, {100 * high:+.1f}] {win}")
        energy = metrics["energy_score"]
        beats = all(energy < b["energy_score"] for b in metrics["baselines"].values())
        lines.append(f"| {name} | {model} | {best} | {cells[0]} | {cells[1]} | "
                     f"{'yes' if beats else 'no'} |")  # fmt: skip
    return lines


def main() -> None:
    opts = parse()
    if not opts.no_run:
        for model in opts.models:
            for name in opts.datasets:
                exists = run_folder(opts, model, name) is not None
                if (opts.evaluate and exists) or (not opts.evaluate and (opts.rerun or not exists)):
                    run(opts, model, name)
    results = {}
    for name in opts.datasets:
        runs = {m: load(f) for m in opts.models if (f := run_folder(opts, m, name))}
        if runs:
            results[name] = runs
    protocol = "reduced CPU protocol" if opts.cpu else "full protocol"
    print(f"\nScores on every test window ({protocol}; normalised units, CRPS_norm and CRPS_sum "
          "in original units):\n")  # fmt: skip
    print("\n".join(score_table(results)))
    print("\nThe better diffusion model against the best baseline (relative difference of the "
          "per-window scores, moving-block bootstrap, 95%):\n")  # fmt: skip
    print("\n".join(win_table(results)))


if __name__ == "__main__":
    main()
