"""run.py end to end: --help, invalid choices, one tiny training run, reloading, device choice."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import StandardScaler

import run
from exp import TASK_REGISTRY
from exp.exp_basic import CheckpointError, select_device
from models.iTransformer import Model
from utils.args import build_parser
from utils.tools import LRADJ_CHOICES

SETTING = (
    "long_term_forecast_test_iTransformer_ETTh1_ftM_sl96_ll48_pl96"
    "_dm16_nh2_el1_df16_fc1_ebtimeF_test_0"
)
REPO_OUTPUTS = ("checkpoints", "results", "test_results", "result_long_term_forecast.txt")


def _run_py(repo_root, cwd, argv, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(repo_root / "run.py"), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_args, repo_root):
    """One epoch of the tiny model through ``python run.py`` in an empty temporary folder."""
    work = tmp_path_factory.mktemp("run")
    before = {name: (repo_root / name).exists() for name in REPO_OUTPUTS}
    argv = tiny_args(work)
    assert not any(a.startswith("--use_gpu") or a == "--no-use_gpu" for a in argv)
    proc = _run_py(repo_root, work, argv)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # nothing was written inside the repository
    assert {name: (repo_root / name).exists() for name in REPO_OUTPUTS} == before
    results = work / "results" / SETTING
    return SimpleNamespace(
        work=work,
        argv=argv,
        proc=proc,
        results=results,
        metrics=np.load(results / "metrics.npy"),
        checkpoint=work / "checkpoints" / SETTING / "checkpoint.pth",
    )


# ---- the parser -----------------------------------------------------------------------------


def test_help_mentions_every_flag(repo_root, tmp_path):
    proc = _run_py(repo_root, tmp_path, ["--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    actions = build_parser()._actions
    assert len(actions) > 40
    for action in actions:
        assert action.help and action.help.strip(), action.option_strings
        for option in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_exits_2_listing_models(repo_root, tmp_path):
    proc = _run_py(repo_root, tmp_path, ["--model", "Foo"], timeout=120)
    assert proc.returncode == 2
    assert "invalid choice: 'Foo'" in proc.stderr
    assert "iTransformer" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "choices"),
    [
        ("--task_name", ["long_term_forecast", *TASK_REGISTRY]),
        ("--lradj", ["type1", "type2", "type3", "cosine", "constant", *LRADJ_CHOICES]),
        ("--model", ["iTransformer"]),
    ],
)
def test_unknown_choice_lists_the_valid_ones(flag, choices, capsys):
    with pytest.raises(SystemExit) as info:
        run.main([flag, "foo"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'foo'" in err
    assert flag in err
    for choice in choices:
        assert choice in err


# ---- one tiny run ---------------------------------------------------------------------------


def test_run_writes_result_file(trained):
    text = (trained.work / "result_long_term_forecast.txt").read_text()
    assert SETTING in text
    match = re.search(r"mse:([-+0-9.eE]+)", text)
    assert match, text
    assert float(match.group(1)) == pytest.approx(float(trained.metrics[1]), rel=1e-6)
    assert "windows:2785" in text


def test_run_metrics_match_saved_arrays(trained, repo_root):
    pred = np.load(trained.results / "pred.npy")
    true = np.load(trained.results / "true.npy")
    assert pred.shape == true.shape == (2785, 96, 7)
    assert trained.metrics.shape == (5,)
    mae, mse, rmse, mape, mspe = trained.metrics
    err = pred.astype(np.float64) - true.astype(np.float64)
    assert mse == pytest.approx(np.mean(err**2), rel=1e-5)
    assert mae == pytest.approx(np.mean(np.abs(err)), rel=1e-5)
    assert rmse == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-5)
    assert mape == pytest.approx(np.mean(np.abs(err / true)), rel=1e-4)
    assert mspe == pytest.approx(np.mean((err / true) ** 2), rel=1e-4)

    # true.npy is the scaled ETTh1 test targets: rows 11520 + i ... 11520 + i + 95 for window i
    raw = pd.read_csv(repo_root / "dataset" / "ETT-small" / "ETTh1.csv").iloc[:, 1:].to_numpy()
    scaled = StandardScaler().fit(raw[:8640]).transform(raw)
    windows = np.lib.stride_tricks.sliding_window_view(scaled[11520:14400], 96, axis=0)
    np.testing.assert_allclose(true, windows.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    # one epoch already beats forecasting the training mean (0 in scaled units)
    assert mse < np.mean(true.astype(np.float64) ** 2)


def test_run_writes_self_describing_checkpoint(trained):
    assert trained.checkpoint.is_file()
    state = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    assert "model" in state and "args" in state
    saved = state["args"]
    assert (saved["d_model"], saved["n_heads"], saved["e_layers"], saved["d_ff"]) == (16, 2, 1, 16)
    assert (saved["enc_in"], saved["dec_in"], saved["c_out"]) == (7, 7, 7)
    assert (saved["seq_len"], saved["pred_len"]) == (96, 96)
    fresh = Model(Namespace(**saved)).state_dict()
    assert state["model"].keys() == fresh.keys()
    for name, tensor in fresh.items():
        assert state["model"][name].shape == tensor.shape, name
    assert state["model"]["projection.weight"].shape == (96, 16)


def test_reload_gives_identical_metrics(trained):
    before = trained.metrics.copy()
    metrics = run.main([*trained.argv, "--is_training", "0"])
    after = np.load(trained.results / "metrics.npy")
    np.testing.assert_allclose(after, before, rtol=1e-6)
    assert metrics["mse"] == pytest.approx(before[1], rel=1e-6)
    lines = (trained.work / "result_long_term_forecast.txt").read_text().count(SETTING)
    assert lines == 2  # appended, not overwritten


def test_reload_with_other_d_model_is_refused(trained):
    # a checkpoint copied under the dm32 setting: the architecture check names both values
    other = SETTING.replace("_dm16_", "_dm32_")
    shutil.copytree(trained.checkpoint.parent, trained.work / "checkpoints" / other)
    with pytest.raises(CheckpointError) as info:
        run.main([*trained.argv, "--is_training", "0", "--d_model", "32"])
    message = str(info.value)
    assert "--d_model 16" in message and "32" in message
    # a refused run writes no results: at most its run.log, which records the refusal
    folder = trained.work / "results" / other
    written = {p.name for p in folder.iterdir()} if folder.exists() else set()
    assert written <= {"run.log"}


def test_reload_without_checkpoint_is_refused(trained):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*_dm48_"):
        run.main([*trained.argv, "--is_training", "0", "--d_model", "48"])


def test_reload_with_other_activation_is_refused(trained):
    # activation is not part of the setting name, so only the checkpoint's args can catch it
    with pytest.raises(CheckpointError, match=r"--activation 'gelu' in the checkpoint vs 'relu'"):
        run.main([*trained.argv, "--is_training", "0", "--activation", "relu"])


# ---- --inverse ------------------------------------------------------------------------------


def _custom_inverse_run(tmp_path, tiny_args, synthetic_csv, features):
    path = synthetic_csv(tmp_path, n_rows=200, n_cols=3)
    argv = tiny_args(
        tmp_path,
        data="custom",
        root_path=str(tmp_path),
        data_path=path.name,
        target="y",
        features=features,
        freq="d",
        seq_len=16,
        label_len=8,
        pred_len=4,
        inverse=True,
    )
    metrics = run.main(argv)
    setting = f"long_term_forecast_test_iTransformer_custom_synthetic_ft{features}_sl16_ll8_pl4" + (
        "_dm16_nh2_el1_df16_fc1_ebtimeF_test_0"
    )
    raw = pd.read_csv(path)[["x1", "x2", "y"]].to_numpy()
    return metrics, tmp_path / "results" / setting, raw


def test_inverse_reports_original_units(tmp_path, tiny_args, synthetic_csv):
    metrics, results, raw = _custom_inverse_run(tmp_path, tiny_args, synthetic_csv, "M")
    true = np.load(results / "true.npy")
    # 200 rows: test rows [200 - 40 - 16, 200), targets start at row 160
    assert true.shape == (40 - 4 + 1, 4, 3)
    windows = np.lib.stride_tricks.sliding_window_view(raw[160:], 4, axis=0)
    np.testing.assert_allclose(true, windows.transpose(0, 2, 1), rtol=1e-5)
    pred = np.load(results / "pred.npy")
    assert metrics["mse"] == pytest.approx(np.mean((pred - true) ** 2), rel=1e-5)


def test_inverse_with_ms_features(tmp_path, tiny_args, synthetic_csv):
    """--inverse with --features MS maps the single target column back to its own units."""
    metrics, results, raw = _custom_inverse_run(tmp_path, tiny_args, synthetic_csv, "MS")
    true = np.load(results / "true.npy")
    windows = np.lib.stride_tricks.sliding_window_view(raw[160:, -1:], 4, axis=0)
    np.testing.assert_allclose(true, windows.transpose(0, 2, 1), rtol=1e-5)


# ---- device ---------------------------------------------------------------------------------


def test_select_device_falls_back_to_cpu(monkeypatch):
    args = Namespace(use_gpu=True, gpu=0, use_multi_gpu=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(args) == torch.device("cpu")
    assert select_device(Namespace(use_gpu=False, gpu=0, use_multi_gpu=False)).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(Namespace(use_gpu=False, gpu=0, use_multi_gpu=False)).type == "cpu"
    assert select_device(Namespace(use_gpu=True, gpu=1, use_multi_gpu=False)) == torch.device(
        "cuda:1"
    )


def test_run_used_the_default_device(trained):
    # no --use_gpu flag: CUDA where the machine has it, else the CPU without being asked
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert f"Use {expected}" in trained.proc.stdout
