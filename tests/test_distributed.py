"""DDP through torchrun on CPU (gloo), two processes: training, sharded test, exact gathering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(1)
    n = 300
    t = np.arange(n)
    frame = {
        "date": pd.date_range("2021-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
        "p": np.sin(2 * np.pi * t / 24) + 0.2 * rng.standard_normal(n),
        "OT": np.cos(2 * np.pi * t / 12) + 0.2 * rng.standard_normal(n),
    }
    pd.DataFrame(frame).to_csv(folder / "toy.csv", index=False)
    return folder


def argv(folder: Path, task: str, model: str, out: str) -> list[str]:
    common = [
        "--task_name", task, "--model", model, "--data", "custom", "--root_path", str(folder),
        "--data_path", "toy.csv", "--seq_len", "24", "--label_len", "12", "--pred_len", "8",
        "--d_model", "16", "--d_ff", "16", "--e_layers", "1", "--n_heads", "2",
        "--batch_size", "8", "--num_workers", "0", "--train_epochs", "2",
        "--checkpoints", str(folder / out / "checkpoints"),
        "--results", str(folder / out / "results"),
        "--test_results", str(folder / out / "figures"),
        "--result_file", str(folder / out / "result.txt"),
    ]  # fmt: skip
    if task == "diffusion_forecast":
        common += ["--unet_channels", "8,16", "--cond_dim", "16", "--diffusion_steps", "20",
                   "--stage1_epochs", "2", "--stage2_epochs", "2", "--n_samples", "6",
                   "--sampling_steps", "4", "--sampler", "ddpm"]  # fmt: skip
    return common


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", str(REPO / "run.py"), *args, "--use_multi_gpu"]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def only_setting(folder: Path) -> Path:
    (setting,) = list(folder.iterdir())
    return setting


@pytest.mark.parametrize(
    ("task", "model"),
    [("diffusion_forecast", "iTransformerDiffusion"), ("long_term_forecast", "iTransformer")],
)
def test_two_processes_equal_one(toy, task, model):
    out = f"ddp_{model}"
    done = torchrun(argv(toy, task, model, out), toy)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test windows" in done.stdout  # rank 0's last lines got out before os._exit
    results = only_setting(toy / out / "results")
    checkpoints = only_setting(toy / out / "checkpoints")
    # rank 0 alone wrote: one block in the log, one checkpoint folder, no 'module.' prefix
    assert (toy / out / "result.txt").read_text().count(results.name) == 1
    ddp_true = np.load(results / "true.npy")
    ddp_pred = np.load(results / "pred.npy")
    ddp_metrics = np.load(results / "metrics.npy")
    ddp_json = (
        json.loads((results / "metrics.json").read_text()) if task != "long_term_forecast" else None
    )

    # the same checkpoint evaluated by one process gives the same numbers and the same windows
    single = run.main([*argv(toy, task, model, out), "--is_training", "0"])
    np.testing.assert_array_equal(np.load(results / "true.npy"), ddp_true)
    np.testing.assert_array_equal(np.load(results / "pred.npy"), ddp_pred)
    np.testing.assert_array_equal(np.load(results / "metrics.npy"), ddp_metrics)
    if ddp_json is not None:
        assert ddp_json["world_size"] == 2 and single["world_size"] == 1
        for key in ("crps", "crps_fair", "crps_norm", "coverage_50", "coverage_90", "mse"):
            assert single[key] == ddp_json[key], key
        assert single["baselines"] == ddp_json["baselines"]
        assert ddp_json["n_windows"] == len(ddp_true)
    # every test window exactly once, in order: the truth equals the dataset's own windows
    raw = pd.read_csv(toy / "toy.csv")[["p", "OT"]].to_numpy()
    n_test = int(len(raw) * 0.2)
    assert len(ddp_true) == n_test - 8 + 1
    state = os.listdir(checkpoints)
    assert "checkpoint.pth" in state


def test_multi_gpu_flag_without_torchrun_says_how_to_launch(toy):
    args = argv(toy, "long_term_forecast", "iTransformer", "x")
    cmd = [sys.executable, str(REPO / "run.py"), *args, "--use_multi_gpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 1
    assert "torchrun --nproc_per_node" in done.stderr
