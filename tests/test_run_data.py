"""run.py and the user's data: checked before anything is logged or trained, one output folder
per data file, no training over another file's checkpoint, and the centring warning."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
import torch

import run
from data_provider.data_loader import DataError
from exp.exp_basic import CheckpointError
from utils.args import parse_args

SHAPE = "_ftM_sl16_ll8_pl4_dm16_nh2_el1_df16_fc1_ebtimeF_test_0"


def diffusion_argv(out: Path, csv: Path, *extra: str) -> list[str]:
    """The tiniest two-stage diffusion run on ``csv`` with every output under ``out``."""
    return [
        "--task_name", "diffusion_forecast", "--model", "iTransformerDiffusion",
        "--data", "custom", "--root_path", str(csv.parent), "--data_path", csv.name,
        "--target", "y", "--freq", "d", "--seq_len", "16", "--label_len", "8", "--pred_len", "4",
        "--d_model", "16", "--d_ff", "16", "--e_layers", "1", "--n_heads", "2",
        "--unet_channels", "8,16", "--cond_dim", "16", "--diffusion_steps", "20",
        "--stage1_epochs", "1", "--stage2_epochs", "1", "--batch_size", "64",
        "--n_samples", "4", "--sampler", "ddim", "--sampling_steps", "2", "--num_workers", "0",
        "--calib_windows", "4", "--checkpoints", str(out / "checkpoints"),
        "--results", str(out / "results"), "--test_results", str(out / "test_results"),
        "--result_file", str(out / "result.txt"), *extra,
    ]  # fmt: skip


def forecast_argv(tiny_args, out: Path, csv: Path, **extra) -> list[str]:
    """A tiny one-epoch iTransformer run (long_term_forecast) on ``csv``."""
    return tiny_args(
        out,
        data="custom",
        root_path=str(csv.parent),
        data_path=csv.name,
        target="y",
        freq="d",
        seq_len=16,
        label_len=8,
        pred_len=4,
        **extra,
    )


@pytest.fixture
def no_figures(monkeypatch):
    """Figures take most of a tiny diffusion run's time and are not what these tests check."""
    monkeypatch.setattr("utils.plots.plot_run", lambda *args, **kwargs: [], raising=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- checked before anything else -----------------------------------------------------------


def test_missing_cell_stops_the_run_before_args_and_training(
    tmp_path, synthetic_csv, caplog, capsys
):
    csv = synthetic_csv(tmp_path, n_rows=60, n_cols=3)
    lines = csv.read_text().splitlines()
    lines[50] = lines[50].rsplit(",", 1)[0] + ","  # x2 of data row 49 (line 51) emptied
    csv.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO, logger="tsdiff"), pytest.raises(DataError) as info:
        run.main(diffusion_argv(tmp_path, csv))
    message = str(info.value)
    assert f"{csv}: column 'x2' has a missing value (nan) on line 51" in message
    assert "EMPTY" in message and "it is the only missing cell" in message
    assert "--missing interpolate" in message
    said = caplog.text + capsys.readouterr().out
    assert "Args:" not in said and "start training" not in said
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results").exists()


def test_missing_interpolate_lets_the_run_go_on(tmp_path, synthetic_csv, tiny_args, caplog):
    csv = synthetic_csv(tmp_path, n_rows=60, n_cols=3)
    lines = csv.read_text().splitlines()
    lines[10] = lines[10].rsplit(",", 1)[0] + ",NaN"
    csv.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO, logger="tsdiff"):
        metrics = run.main(forecast_argv(tiny_args, tmp_path, csv, missing="interpolate"))
    assert "--missing interpolate filled 1 cells" in caplog.text
    assert caplog.text.index("filled 1 cells") < caplog.text.index("Args:")
    assert torch.isfinite(torch.tensor(metrics["mse"]))


# ---- one folder per data file ---------------------------------------------------------------


def test_two_csvs_of_the_same_shape_keep_their_own_folders(tmp_path, synthetic_csv, no_figures):
    """Same flags, same shapes, one --checkpoints/--results: two settings, one per file."""
    co2 = synthetic_csv(tmp_path, n_rows=60, n_cols=3, name="co2_weekly.csv", seed=1)
    sales = synthetic_csv(tmp_path, n_rows=60, n_cols=3, name="sales.csv", seed=2)
    for csv in (co2, sales):
        run.main(diffusion_argv(tmp_path, csv))
    names = {
        csv.stem: f"diffusion_forecast_test_iTransformerDiffusion_custom_{csv.stem}{SHAPE}"
        for csv in (co2, sales)
    }
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    results = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert checkpoints == results == sorted(names.values())
    for stem, setting in names.items():
        state = torch.load(tmp_path / "checkpoints" / setting / "checkpoint.pth", weights_only=True)
        assert Path(state["args"]["data_file"]).name == f"{stem}.csv"
        assert (tmp_path / "results" / setting / "metrics.json").is_file()


# ---- another file's checkpoint --------------------------------------------------------------


def test_checkpoint_of_other_data_is_refused_unless_overwrite(tmp_path, synthetic_csv, tiny_args):
    """Two files with one name (so one setting) in two folders: the second run is refused
    without --overwrite and replaces the checkpoint with it; a re-run of a file is fine."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = synthetic_csv(tmp_path / "a", n_rows=60, n_cols=3, name="data.csv", seed=1)
    other = synthetic_csv(tmp_path / "b", n_rows=60, n_cols=3, name="data.csv", seed=2)
    setting = f"long_term_forecast_test_iTransformer_custom_data{SHAPE}"
    ckpt = tmp_path / "checkpoints" / setting / "checkpoint.pth"
    run.main(forecast_argv(tiny_args, tmp_path, first))
    run.main(forecast_argv(tiny_args, tmp_path, first))  # the same data again: allowed
    before = digest(ckpt)

    with pytest.raises(CheckpointError) as info:
        run.main(forecast_argv(tiny_args, tmp_path, other))
    message = str(info.value)
    assert message == (
        f"{ckpt} was built from {first}, not from {other}; training would overwrite it, so "
        "give this run its own --model_id or --checkpoints, or add --overwrite to replace it"
    )
    assert digest(ckpt) == before
    # testing (--is_training 0) is not training: the usual checks apply, not this one
    run.main(forecast_argv(tiny_args, tmp_path, other, is_training=0))

    run.main(forecast_argv(tiny_args, tmp_path, other, overwrite=True))
    assert digest(ckpt) != before
    saved = torch.load(ckpt, weights_only=True)["args"]
    assert saved["data_file"] == str(other)


def test_checkpoint_of_other_columns_is_refused(tmp_path, synthetic_csv, tiny_args):
    csv = synthetic_csv(tmp_path, n_rows=60, n_cols=3)
    run.main(forecast_argv(tiny_args, tmp_path, csv))
    text = csv.read_text().splitlines()
    text[0] = text[0].replace("x2", "rain")
    csv.write_text("\n".join(text) + "\n")
    with pytest.raises(CheckpointError) as info:
        run.main(forecast_argv(tiny_args, tmp_path, csv))
    message = str(info.value)
    assert f"was built from {csv} when its columns were ['date', 'y', 'x1', 'x2']" in message
    assert "not ['date', 'y', 'x1', 'rain']" in message and "--overwrite" in message


def test_checkpoint_from_a_relative_path_is_recognised(
    tmp_path, synthetic_csv, tiny_args, monkeypatch
):
    """The file a checkpoint was built from is stored as an absolute path: a re-run of the same
    file given another way (relative, from elsewhere) is the same data."""
    (tmp_path / "data").mkdir()
    csv = synthetic_csv(tmp_path / "data", n_rows=60, n_cols=3)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    run.main(forecast_argv(tiny_args, out, csv))
    argv = forecast_argv(tiny_args, out, csv)
    argv[argv.index("--root_path") + 1] = "./data/../data"
    run.main(argv)  # not refused


def test_copied_checkpoint_of_other_data_is_refused(tmp_path, synthetic_csv, tiny_args):
    """A checkpoint folder copied under another data file's setting is refused too."""
    a = synthetic_csv(tmp_path, n_rows=60, n_cols=3, name="a.csv", seed=1)
    b = synthetic_csv(tmp_path, n_rows=60, n_cols=3, name="b.csv", seed=2)
    run.main(forecast_argv(tiny_args, tmp_path, a))
    folder = tmp_path / "checkpoints"
    shutil.copytree(
        folder / f"long_term_forecast_test_iTransformer_custom_a{SHAPE}",
        folder / f"long_term_forecast_test_iTransformer_custom_b{SHAPE}",
    )
    with pytest.raises(CheckpointError, match=f"was built from {a}, not from {b}"):
        run.main(forecast_argv(tiny_args, tmp_path, b))


# ---- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "warns"),
    [
        (["--n_samples", "4"], True),
        (["--n_samples", "19"], True),
        (["--n_samples", "20"], False),
        (["--n_samples", "4", "--center_samples", "0"], False),
        (["--n_samples", "4", "--task_name", "long_term_forecast"], False),
    ],
)
def test_centring_few_samples_warns(extra, warns, caplog):
    argv = ["--task_name", "diffusion_forecast", "--model", "iTransformerDiffusion", *extra]
    with caplog.at_level(logging.WARNING, logger="tsdiff"):
        parse_args(argv)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warns:
        (message,) = warnings
        n = extra[1]
        assert f"--center_samples 1 with only --n_samples {n}" in message
        assert "--n_samples 20 or more, or --center_samples 0" in message
    else:
        assert warnings == []
