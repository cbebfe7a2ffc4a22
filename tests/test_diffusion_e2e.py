"""End-to-end runs of both diffusion models through run.py on a small synthetic CSV."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import properscoring as ps
import pytest

import run
from exp.baselines import NAMES

KEYS = ("mse", "mae", "rmse", "crps", "crps_fair", "crps_norm", "crps_sum", "coverage_50",
        "coverage_90", "sharpness_90")  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 3-variate daily CSV with a seasonal signal plus noise, and an output folder."""
    folder = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(0)
    n = 400
    t = np.arange(n)
    data = {
        "date": pd.date_range("2020-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
        "a": np.sin(2 * np.pi * t / 7) + 0.3 * rng.standard_normal(n),
        "b": np.cos(2 * np.pi * t / 30) + 0.3 * rng.standard_normal(n),
        "y": 0.01 * t + 0.5 * rng.standard_normal(n),
    }
    pd.DataFrame(data).to_csv(folder / "toy.csv", index=False)
    return folder


def argv(folder, model: str, *extra: str) -> list[str]:
    return [
        "--task_name", "diffusion_forecast", "--model", model, "--data", "custom",
        "--root_path", str(folder), "--data_path", "toy.csv", "--target", "y", "--freq", "d",
        "--seq_len", "24", "--label_len", "12", "--pred_len", "12",
        "--d_model", "16", "--d_ff", "16", "--e_layers", "1", "--n_heads", "2",
        "--unet_channels", "8,16", "--cond_dim", "16", "--diffusion_steps", "50",
        "--stage1_epochs", "2", "--stage2_epochs", "2", "--batch_size", "32",
        "--n_samples", "16", "--sampling_steps", "5", "--num_workers", "0",
        "--checkpoints", str(folder / "checkpoints"), "--results", str(folder / "results"),
        "--test_results", str(folder / "test_results"),
        "--result_file", str(folder / "result_diffusion_forecast.txt"),
        "--model_id", model, *extra,
    ]  # fmt: skip


def results_of(folder, model: str) -> str:
    (path,) = [p for p in (folder / "results").iterdir() if f"_{model}_custom_" in p.name]
    return str(path)


@pytest.mark.parametrize("model", ["iTransformerDiffusion", "iTransformerDiffusionDirect"])
def test_train_evaluate_and_reevaluate(workdir, model):
    metrics = run.main(argv(workdir, model, "--save_samples"))
    folder = results_of(workdir, model)
    with open(os.path.join(folder, "metrics.json")) as f:
        saved = json.load(f)
    for key in (*KEYS, "energy_score", "variogram_score"):
        assert np.isfinite(saved[key]), key
        for name in NAMES:
            if (name, key) != ("itransformer", "crps_fair"):  # a point mass has no fair CRPS
                assert np.isfinite(saved["baselines"][name][key]), (name, key)
    # every test window is scored: 400 rows, 7:1:2 → 80 test rows + 24 lookback → 69 windows
    assert saved["n_windows"] == 80 - 12 + 1
    assert saved["sampler"] == "ddim" and saved["n_samples"] == 16

    # the reported CRPS is the proper ensemble CRPS of the saved samples
    samples = np.load(os.path.join(folder, "samples.npy"))  # (S, windows, H, N)
    true = np.load(os.path.join(folder, "true.npy"))  # (windows, H, N)
    assert samples.shape == (16, 69, 12, 3) and true.shape == (69, 12, 3)
    reference = ps.crps_ensemble(true, np.moveaxis(samples, 0, -1)).mean()
    assert abs(saved["crps"] - reference) / reference < 1e-4
    assert np.allclose(np.load(os.path.join(folder, "pred.npy")), samples.mean(0), atol=1e-5)
    # the point-mass baseline's CRPS is its absolute error
    point = saved["baselines"]["itransformer"]
    assert point["crps"] == pytest.approx(point["mae"], rel=1e-9)
    assert point["coverage_90"] == 0.0
    # TSLib's metrics.npy order [mae, mse, rmse, mape, mspe] for the sample mean
    mae, mse = np.load(os.path.join(folder, "metrics.npy"))[:2]
    assert mse == pytest.approx(saved["mse"], rel=1e-4) and mae == pytest.approx(
        saved["mae"], rel=1e-4
    )
    assert metrics["crps"] == saved["crps"]

    # test-only re-evaluation with another sampler appends a block and rewrites metrics.json
    import torch

    (ckpt,) = [p for p in (workdir / "checkpoints").glob(f"*_{model}_*/checkpoint.pth")]
    state = torch.load(ckpt, weights_only=False)
    state["baseline_fit"]["c"] *= 10  # a stale fit, as from an older recipe
    torch.save(state, ckpt)
    log_path = workdir / "result_diffusion_forecast.txt"
    blocks_before = log_path.read_text().count("sampler:")
    again = run.main(argv(workdir, model, "--is_training", "0", "--sampler", "ddpm",
                          "--sampling_steps", "50"))  # fmt: skip
    assert again["sampler"] == "ddpm" and again["sampling_steps"] == 50
    assert log_path.read_text().count("sampler:") == blocks_before + 1
    # the baselines are refitted at every evaluation (a stale fit in the checkpoint is replaced)
    # and draw from their own seeded streams, so they are identical across re-evaluations at
    # the same sample count, whatever the sampler
    assert again["baselines"] == saved["baselines"]


def test_same_seed_same_samples(workdir):
    """Two test-only evaluations of one checkpoint with the same seed give identical metrics."""
    model = "iTransformerDiffusion"
    if not (workdir / "checkpoints").exists():
        run.main(argv(workdir, model))
    first = run.main(argv(workdir, model, "--is_training", "0", "--sampler", "dpm_solver"))
    second = run.main(argv(workdir, model, "--is_training", "0", "--sampler", "dpm_solver"))
    assert first["crps"] == second["crps"] and first["mse"] == second["mse"]


def test_spread_calibration_rescales_around_the_mean(workdir):
    """--calibrate_spread fits scales on validation windows; the samples widen or narrow
    around an unchanged mean, and --calibrate_spread none leaves them as drawn."""
    model = "iTransformerDiffusion"
    if not (workdir / "checkpoints").exists():
        run.main(argv(workdir, model))
    common = ("--is_training", "0", "--calib_windows", "40")
    off = run.main(argv(workdir, model, *common, "--calibrate_spread", "none"))
    one = run.main(argv(workdir, model, *common, "--calibrate_spread", "global"))
    each = run.main(argv(workdir, model, *common))  # default: per variate
    assert off["spread_scale"] is None and off["eval_split"] == "test"
    (s,) = set(one["spread_scale"])  # one factor for the 3 variates
    assert len(one["spread_scale"]) == 3 and s != 1.0  # this tiny model is far from calibrated
    assert len(set(each["spread_scale"])) > 1
    for m in (one, each):
        assert m["mse"] == pytest.approx(off["mse"], rel=1e-5)  # the mean does not move
    ratio = one["sharpness_90"] / off["sharpness_90"]
    assert ratio == pytest.approx(s, rel=0.02)  # interval width scales with s
    val = run.main(argv(workdir, model, "--is_training", "0", "--eval_split", "val"))
    assert val["eval_split"] == "val" and val["n_windows"] == 40 - 12 + 1  # 40 val rows


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory, workdir):
    """The stage-1 and final checkpoints of one training run (``--marginal empirical``)."""
    import torch

    folder = tmp_path_factory.mktemp("stages")
    run.main(argv(workdir, "iTransformerDiffusion", "--checkpoints", str(folder), "--marginal",
                  "empirical"))  # fmt: skip
    (folder,) = [p for p in folder.iterdir() if p.is_dir()]
    load = lambda name: torch.load(folder / name, weights_only=False)  # noqa: E731
    return load("checkpoint_stage1.pth"), load("checkpoint.pth")


def test_stage2_keeps_the_encoder_and_trains_head_and_denoiser(two_stages):
    """Stage 2 leaves the embedding and encoder exactly as stage 1 left them (the baselines
    share their z) and trains the head and the denoiser."""
    import torch

    stage1, final = two_stages[0]["model"], two_stages[1]["model"]
    frozen = ("backbone.encoder.", "backbone.enc_embedding.")
    for prefix, should_change in ((frozen, False), (("backbone.projection.",), True),
                                  (("denoiser.",), True)):  # fmt: skip
        keys = [k for k in final if k.startswith(prefix)]
        assert keys
        changed = any(not torch.equal(stage1[k], final[k]) for k in keys)
        assert changed == should_change, prefix


def _stage1_forecasts(stage1: dict, split: str):
    """The stage-1 checkpoint's lookbacks x (W, L, N), targets y (W, H, N) and point forecasts
    y_det (W, H, N) on every window of ``split``, as numpy arrays."""
    from argparse import Namespace

    import torch

    from data_provider.data_factory import data_provider
    from models import iTransformerDiffusion as M

    args = Namespace(**stage1["args"])
    model = M.Model(args)
    model.load_state_dict(stage1["model"])
    model.eval()
    data, _ = data_provider(args, split)
    x, y, x_mark = (
        torch.stack([torch.as_tensor(data[i][k]) for i in range(len(data))]).float()
        for k in range(3)
    )
    with torch.no_grad():
        y_det = model.backbone_forward(x, x_mark)[0].numpy()
    return x.numpy(), y[:, -args.pred_len :].numpy(), y_det


def test_the_marginal_table_holds_the_quantiles_of_the_stage1_training_residuals(two_stages):
    """Before stage 2 the model's marginal table is fitted on every training window's residual
    y − y_det of the stage-1 backbone, divided by the lookback σ (floored at 0.1): here computed
    from the data set and the stage-1 weights, with numpy's quantiles."""
    from models import iTransformerDiffusion as M

    stage1, final = two_stages
    x, y, y_det = _stage1_forecasts(stage1, "train")
    sigma = np.sqrt(x.var(1, keepdims=True) + 1e-5).clip(min=M.STD_FLOOR)
    residual = (y - y_det) / sigma  # (W, H, N)
    levels = np.linspace(0, 1, M.MARGINAL_LEVELS)
    expected = np.quantile(residual.transpose(0, 2, 1), levels, axis=0)  # (K, N, H)
    table = final["model"]["marginal_table"].numpy()
    np.testing.assert_allclose(table, expected, atol=3e-3)
    assert final["args"]["marginal"] == "empirical"


def test_the_baselines_are_fitted_on_the_stage1_validation_residuals(two_stages):
    """The evaluation's baselines are built on the stage-1 forecast (whose head stage 2 goes on
    training): the stored Gaussian σ is the RMSE per (step, variate) of the stage-1 backbone's
    validation residuals, recomputed here from the data set with numpy."""
    stage1, final = two_stages
    _, y, y_det = _stage1_forecasts(stage1, "val")
    rmse = np.sqrt(((y - y_det) ** 2).mean(0))  # (H, N)
    np.testing.assert_allclose(final["baseline_fit"]["sigma"].numpy(), rmse, rtol=1e-4)


def test_a_checkpoint_from_before_an_argument_existed_was_built_with_its_default(
    two_stages, tmp_path
):
    """An architecture argument missing from a checkpoint's arguments compares as the
    parser's default: --cond_forecast (default 1, used 1) loads; --marginal (default none,
    used empirical) is refused with both values named."""
    from argparse import Namespace

    import torch

    from exp.exp_basic import CheckpointError
    from exp.exp_diffusion_forecast import Exp_Diffusion_Forecast

    final = two_stages[1]
    exp = Exp_Diffusion_Forecast(Namespace(**final["args"]))
    for dropped, loads in (("cond_forecast", True), ("marginal", False)):
        args = {k: v for k, v in final["args"].items() if k != dropped}
        path = tmp_path / f"without_{dropped}.pth"
        torch.save({**final, "args": args}, path)
        if loads:
            exp.load_checkpoint(str(path))
        else:
            with pytest.raises(CheckpointError, match="'none' in the checkpoint vs 'empirical'"):
                exp.load_checkpoint(str(path))


def test_sampling_benchmark_runs_on_a_checkpoint(workdir, repo_root):
    """scripts/benchmark_sampling.py on a trained checkpoint: the sampler table (b) lists
    every sampler whose steps fit the checkpoint's 50 diffusion steps, and the last line is
    the speed-up, as the README and the issue describe."""
    model = "iTransformerDiffusion"
    if not (workdir / "checkpoints").exists():
        run.main(argv(workdir, model))
    (ckpt,) = [
        p for p in (workdir / "checkpoints").glob("*/checkpoint.pth") if f"_{model}_" in str(p)
    ]
    cmd = [sys.executable, "scripts/benchmark_sampling.py", "--checkpoint", str(ckpt),
           "--n_samples", "4", "--batch_size", "4", "--table_windows", "8", "--steps", "2",
           "--repeats", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    table = [ln.split() for ln in lines if ln.split()[:1] in (["ddpm"], ["ddim"], ["dpm_solver"])]
    assert [(row[0], int(row[1])) for row in table] == [
        ("ddim", 10), ("ddim", 20), ("ddim", 50),
        ("dpm_solver", 5), ("dpm_solver", 10), ("dpm_solver", 20),
    ]  # fmt: skip
    assert all(np.isfinite(float(row[2])) and float(row[2]) > 0 for row in table)
    assert any(ln.startswith("(c) peak resident memory") for ln in lines)
    name, value = lines[-1].split(": ")
    assert name == "speedup_vs_looped" and float(value) > 0
