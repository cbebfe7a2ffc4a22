"""Reliability of diffusion_forecast runs: every fixable mistake ends in one sentence naming the
culprit, saved checkpoints are never damaged, an interrupted run resumes to exactly the result of
an uninterrupted one, a non-finite loss stops the run, and identical runs give identical numbers.

Every run is tiny (300 rows, 3 variates, d_model 16, 3 + 3 epochs) so the file stays fast on a
small shared machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import run
from data_provider.data_loader import DataError
from exp.exp_basic import CheckpointError, read_checkpoint
from exp.exp_diffusion_forecast import Exp_Diffusion_Forecast
from models import iTransformerDiffusion
from utils.tools import atomic_save

ROWS, SEQ, PRED, BATCH = 300, 24, 12, 32
STAGE1, STAGE2 = 3, 3
MODEL = "iTransformerDiffusion"
SETTING_OF = (
    "diffusion_forecast_test_{model}_custom_good_ftM_sl24_ll12_pl12_dm16_nh2_el1_df16_fc1"
    "_ebtimeF_test_0"
).format
SETTING = SETTING_OF(model=MODEL)
# custom splits 7:1:2 → 210 training rows → 175 windows → 6 batches of 32 per epoch
TRAIN_BATCHES = math.ceil((int(ROWS * 0.7) - SEQ - PRED + 1) / BATCH)
METRIC_KEYS = ("mse", "mae", "rmse", "crps", "crps_fair", "crps_norm", "crps_sum",
               "coverage_50", "coverage_90", "sharpness_90")  # fmt: skip
CHECKPOINTS = ("checkpoint.pth", "checkpoint_stage1.pth", "checkpoint_last.pth")


# ---- helpers ---------------------------------------------------------------------------------


def make_argv(out: Path, csv: Path, *extra: str) -> list[str]:
    """A tiny two-stage diffusion run on ``csv`` with every output under ``out``."""
    return [
        "--task_name", "diffusion_forecast", "--model", MODEL, "--data", "custom",
        "--root_path", str(csv.parent), "--data_path", csv.name, "--target", "y",
        "--freq", "d", "--seq_len", str(SEQ), "--label_len", "12", "--pred_len", str(PRED),
        "--d_model", "16", "--d_ff", "16", "--e_layers", "1", "--n_heads", "2",
        "--unet_channels", "8,16", "--cond_dim", "16", "--diffusion_steps", "50",
        "--stage1_epochs", str(STAGE1), "--stage2_epochs", str(STAGE2),
        "--batch_size", str(BATCH), "--n_samples", "4", "--sampling_steps", "3",
        "--num_workers", "0", "--seed", "2021",
        "--checkpoints", str(out / "checkpoints"), "--results", str(out / "results"),
        "--test_results", str(out / "test_results"),
        "--result_file", str(out / "result_diffusion_forecast.txt"),
        *extra,
    ]  # fmt: skip


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path → digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def saved_metrics(out: Path, setting: str = SETTING) -> dict:
    with open(out / "results" / setting / "metrics.json") as f:
        return json.load(f)


def numbers(metrics: dict) -> dict:
    """The scores of a run (model and both baselines), without the timing."""
    picked = {k: metrics[k] for k in METRIC_KEYS}
    for name, scores in metrics["baselines"].items():
        picked.update({f"{name}.{k}": scores.get(k) for k in METRIC_KEYS})
    return picked


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(str(path))["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def copy_checkpoints(src: Path, dst: Path) -> Path:
    """A private copy of a trained run's checkpoints (tests may break their copy)."""
    shutil.copytree(src / "checkpoints", dst / "checkpoints")
    return dst / "checkpoints" / SETTING


def edit_cell(src: Path, dst: Path, row: int, column: str, value: str) -> Path:
    """``src`` with one cell replaced; data row ``row`` is on line ``row + 2`` of the file."""
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(dst, index=False)
    return dst


def run_py(repo_root: Path, cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(repo_root / "run.py"), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


class _Recorder:
    """Wraps ``Exp_Diffusion_Forecast._train_epoch``: records (stage, epoch) of every training
    epoch and can kill the run (KeyboardInterrupt, as Ctrl-C) before batch ``step`` of one."""

    def __init__(self, monkeypatch, kill_at: tuple[str, int, int] | None = None, on_start=None):
        self.epochs: list[tuple[str, int]] = []
        self.kill_at, self.on_start = kill_at, on_start
        original = Exp_Diffusion_Forecast._train_epoch
        recorder = self

        def train_epoch(self, loader, optimizer, scaler, stage, epoch, after_step=None):
            recorder.epochs.append((stage, epoch))
            if recorder.on_start is not None:
                recorder.on_start(self, stage, epoch)
            if recorder.kill_at is not None and recorder.kill_at[:2] == (stage, epoch):
                loader = _DyingLoader(loader, recorder.kill_at[2])
            return original(self, loader, optimizer, scaler, stage, epoch, after_step=after_step)

        monkeypatch.setattr(Exp_Diffusion_Forecast, "_train_epoch", train_epoch)


class _DyingLoader:
    """The loader (every attribute kept), raising KeyboardInterrupt before batch ``step``."""

    def __init__(self, loader, step: int):
        self.loader, self.step = loader, step

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.step:
                raise KeyboardInterrupt
            yield batch


ALL_EPOCHS = [("warmup", e) for e in range(1, STAGE1 + 1)] + [
    ("joint", e) for e in range(1, STAGE2 + 1)
]


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_csv):
    """good.csv (date, y, x1, x2), renamed.csv (same values, x1/x2 renamed), short.csv."""
    folder = tmp_path_factory.mktemp("reliability_data")
    good = synthetic_csv(folder, n_rows=ROWS, n_cols=3, target="y", name="good.csv")
    df = pd.read_csv(good, dtype=str)
    df.rename(columns={"x1": "u1", "x2": "u2"}).to_csv(folder / "renamed.csv", index=False)
    synthetic_csv(folder, n_rows=100, n_cols=3, target="y", name="short.csv")
    return SimpleNamespace(
        folder=folder,
        good=good,
        renamed=folder / "renamed.csv",
        short=folder / "short.csv",
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data):
    """The uninterrupted reference run: its metrics M and its checkpoints."""
    out = tmp_path_factory.mktemp("baseline")
    metrics = run.main(make_argv(out, data.good))
    return SimpleNamespace(
        out=out,
        metrics=metrics,
        numbers=numbers(saved_metrics(out)),
        ckpt=out / "checkpoints" / SETTING,
    )


# ---- 1. bad inputs ---------------------------------------------------------------------------


def _write_bad(case: str, data, folder: Path) -> tuple[Path, list[str]]:
    """(csv path, fragments the message must contain) for one bad-data case."""
    good = data.good
    if case == "missing":
        return folder / "absent.csv", [str(folder / "absent.csv")]
    if case == "garbage":
        path = folder / "garbage.csv"
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8" * 50)
        return path, ["cannot read", str(path)]
    if case == "empty":
        path = folder / "empty.csv"
        path.write_text("")
        return path, ["cannot read", str(path)]
    if case == "directory":
        path = folder / "folder.csv"
        path.mkdir()
        return path, [str(path)]
    if case == "no_date":
        path = folder / "nodate.csv"
        pd.read_csv(good, dtype=str).rename(columns={"date": "when"}).to_csv(path, index=False)
        return path, [str(path), "'date'", "'when'"]
    if case == "bad_date":
        path = edit_cell(good, folder / "baddate.csv", 40, "date", "2020-13-45 99:00:00")
        return path, [str(path), "'2020-13-45 99:00:00'", "line 42", "'date'"]
    if case == "non_numeric":
        path = edit_cell(good, folder / "text.csv", 57, "x1", "abc")
        return path, [str(path), "'x1'", "'abc'", "line 59"]
    if case == "nan":
        path = edit_cell(good, folder / "nan.csv", 123, "x2", "")
        return path, [str(path), "'x2'", "nan", "line 125"]
    if case == "inf":
        path = edit_cell(good, folder / "inf.csv", 250, "y", "inf")
        return path, [str(path), "'y'", "inf", "line 252"]
    if case == "ragged":
        path = folder / "ragged.csv"
        lines = good.read_text().splitlines()
        lines[59] += ",7"  # one field too many on line 60
        path.write_text("\n".join(lines) + "\n")
        return path, ["cannot read", str(path), "line 60"]
    raise AssertionError(case)


BAD_DATA = ["missing", "garbage", "empty", "directory", "no_date", "bad_date", "non_numeric",
            "nan", "inf", "ragged"]  # fmt: skip


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_sentence_naming_the_culprit(case, data, baseline, tmp_path):
    """A training run on bad data stops with a DataError naming the file (and column, line)
    and leaves the checkpoints already saved under the same setting untouched."""
    ckpt = copy_checkpoints(baseline.out, tmp_path)
    before = digests(ckpt)
    csv, fragments = _write_bad(case, data, tmp_path)
    with pytest.raises(DataError) as info:
        run.main(make_argv(tmp_path, csv))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message, message
    assert digests(ckpt) == before


def test_missing_target_column_is_named(data, tmp_path):
    with pytest.raises(DataError) as info:
        run.main(make_argv(tmp_path, data.good, "--target", "nope"))
    message = str(info.value)
    assert "'nope'" in message and "--target" in message and str(data.good) in message
    assert "['date', 'y', 'x1', 'x2']" in message


def test_split_too_short_names_split_and_numbers(data, tmp_path):
    """100 rows → 10 validation rows + 24 lookback = 34 < 24 + 12."""
    with pytest.raises(DataError) as info:
        run.main(make_argv(tmp_path, data.short))
    message = str(info.value)
    assert str(data.short) in message and "100 rows" in message
    assert "val split has 34 rows" in message
    assert "seq_len + pred_len = 24 + 12 = 36" in message


def test_enc_in_contradicting_the_data(data, tmp_path):
    with pytest.raises(DataError) as info:
        run.main(make_argv(tmp_path, data.good, "--enc_in", "5"))
    message = str(info.value)
    assert "--enc_in 5" in message and "has 3" in message and "good.csv" in message
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--pred_len", "0"], "--pred_len must be at least 1, got 0"),
        (["--seq_len", "-1"], "--seq_len must be at least 1, got -1"),
        (
            ["--sampling_steps", "2000", "--diffusion_steps", "1000"],
            "--sampling_steps 2000 must be between 1 and --diffusion_steps 1000",
        ),
    ],
)
def test_impossible_arguments_are_usage_errors(extra, expected, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run.main(make_argv(tmp_path, data.good, *extra))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {expected}" in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["missing", "non_numeric", "truncated_checkpoint", "pred_len"])
def test_cli_prints_one_line_and_exits(case, data, baseline, tmp_path, repo_root):
    """``python run.py``: a fixable mistake is one ``error: ...`` line, never a traceback."""
    extra: list[str] = []
    csv, code = data.good, 1
    if case == "truncated_checkpoint":
        ckpt = copy_checkpoints(baseline.out, tmp_path) / "checkpoint.pth"
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        extra, fragments = ["--is_training", "0"], ["cannot read checkpoint", str(ckpt)]
    elif case == "pred_len":
        extra, fragments, code = ["--pred_len", "0"], ["--pred_len must be at least 1"], 2
    else:
        csv, fragments = _write_bad(case, data, tmp_path)
    proc = run_py(repo_root, tmp_path, make_argv(tmp_path, csv, *extra))
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    if code == 1:
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    else:
        lines = proc.stderr.splitlines()
        assert lines[0].startswith("usage: ") and lines[-1].startswith("run.py: error: ")
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


# ---- 2. checkpoints --------------------------------------------------------------------------


def test_truncated_checkpoint_is_refused(data, baseline, tmp_path):
    ckpt = copy_checkpoints(baseline.out, tmp_path)
    path = ckpt / "checkpoint.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = digests(ckpt)
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        run.main(make_argv(tmp_path, data.good, "--is_training", "0"))
    assert str(path) in str(info.value)
    assert digests(ckpt) == before


@pytest.mark.parametrize("kind", ["list", "text"])
def test_foreign_file_is_refused(kind, data, baseline, tmp_path):
    ckpt = copy_checkpoints(baseline.out, tmp_path)
    path = ckpt / "checkpoint.pth"
    if kind == "list":
        torch.save([1, 2, 3], path)
        expected = "is not a checkpoint written by this project"
    else:
        path.write_text("model weights go here\n")
        expected = "cannot read checkpoint"
    before = digests(ckpt)
    with pytest.raises(CheckpointError, match=expected) as info:
        run.main(make_argv(tmp_path, data.good, "--is_training", "0"))
    assert str(path) in str(info.value)
    assert digests(ckpt) == before


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--cond_dim", "32"], "--cond_dim 16 in the checkpoint vs 32 now"),
        (["--unet_channels", "8,32"], "--unet_channels '8,16' in the checkpoint vs '8,32' now"),
    ],
)
def test_checkpoint_with_other_shapes_is_refused(extra, expected, data, baseline, tmp_path):
    """Neither flag is part of the setting name: the same folder is found, then refused."""
    ckpt = copy_checkpoints(baseline.out, tmp_path)
    before = digests(ckpt)
    with pytest.raises(CheckpointError) as info:
        run.main(make_argv(tmp_path, data.good, "--is_training", "0", *extra))
    message = str(info.value)
    assert expected in message and str(ckpt / "checkpoint.pth") in message
    assert digests(ckpt) == before


def test_checkpoint_of_another_model_is_refused(data, baseline, tmp_path):
    other = "iTransformerDiffusionDirect"
    folder = tmp_path / "checkpoints" / SETTING_OF(model=other)
    shutil.copytree(baseline.ckpt, folder)
    before = digests(folder)
    with pytest.raises(CheckpointError) as info:
        run.main(make_argv(tmp_path, data.good, "--is_training", "0", "--model", other))
    message = str(info.value)
    assert f"--model '{MODEL}' in the checkpoint vs '{other}' now" in message
    assert str(folder / "checkpoint.pth") in message
    assert digests(folder) == before


def test_checkpoint_of_other_variates_is_refused(data, baseline, tmp_path):
    """Same shapes, other column names (renamed.csv): the data's columns are named."""
    ckpt = copy_checkpoints(baseline.out, tmp_path)
    renamed = ckpt.parent / SETTING.replace("_custom_good_", "_custom_renamed_")
    ckpt = Path(shutil.move(ckpt, renamed))  # renamed.csv has a setting of its own
    before = digests(ckpt)
    with pytest.raises(CheckpointError) as info:
        run.main(make_argv(tmp_path, data.renamed, "--is_training", "0"))
    message = str(info.value)
    assert "the data's columns" in message
    assert "['date', 'y', 'x1', 'x2'] in the checkpoint" in message
    assert "['date', 'y', 'u1', 'u2'] now" in message
    assert digests(ckpt) == before


def test_checkpoint_with_other_target_is_refused(data, baseline, tmp_path):
    ckpt = copy_checkpoints(baseline.out, tmp_path)
    with pytest.raises(CheckpointError, match="--target"):
        run.main(make_argv(tmp_path, data.good, "--is_training", "0", "--target", "x1"))
    assert digests(ckpt) == digests(baseline.ckpt)


# ---- 3. atomic writes ------------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_save_keeps_the_previous_checkpoint(error, tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    atomic_save({"model": {"w": torch.arange(1000.0)}, "args": {}}, str(path))
    before = path.read_bytes()
    real_save = torch.save
    partial: list[dict[str, int]] = []

    def dying_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        partial.append({p.name: p.stat().st_size for p in tmp_path.iterdir()})
        raise error

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(type(error)):
        atomic_save({"model": {"w": torch.arange(5000.0)}, "args": {}}, str(path))
    monkeypatch.undo()
    # half a file was really written next to the checkpoint, then cleaned up
    (during,) = partial
    temps = [name for name in during if name != "checkpoint.pth"]
    assert len(temps) == 1 and during[temps[0]] > 0, during
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]
    assert torch.equal(read_checkpoint(str(path))["model"]["w"], torch.arange(1000.0))


# ---- 4. resume -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kill_at", "last", "resumed_epochs"),
    [
        # mid stage 1: killed before step 3 of warm-up epoch 2
        (("warmup", 2, 3), ("warmup", 1, False), ALL_EPOCHS[1:]),
        # between the stages: killed before the first joint step
        (("joint", 1, 0), ("warmup", STAGE1, True), ALL_EPOCHS[STAGE1:]),
        # mid stage 2: killed before step 3 of joint epoch 2
        (("joint", 2, 3), ("joint", 1, False), ALL_EPOCHS[STAGE1 + 1 :]),
    ],
    ids=["mid_stage1", "between_stages", "mid_stage2"],
)
def test_resume_after_a_kill_matches_the_uninterrupted_run(
    kill_at, last, resumed_epochs, data, baseline, tmp_path, monkeypatch
):
    argv = make_argv(tmp_path, data.good)
    ckpt = tmp_path / "checkpoints" / SETTING
    with monkeypatch.context() as m:
        _Recorder(m, kill_at=kill_at)
        with pytest.raises(KeyboardInterrupt):
            run.main(argv)
    state = read_checkpoint(str(ckpt / "checkpoint_last.pth"))
    assert (state["stage"], state["epoch"], state["finished"]) == last
    assert not list(ckpt.glob(".tmp_*"))

    recorder = _Recorder(monkeypatch)
    metrics = run.main([*argv, "--resume"])
    # finished epochs are not trained again ...
    assert recorder.epochs == resumed_epochs
    # ... and the result is the uninterrupted run's, bit for bit
    assert numbers(metrics) == baseline.numbers
    assert numbers(saved_metrics(tmp_path)) == baseline.numbers
    for name in CHECKPOINTS:
        assert_same_weights(model_weights(ckpt / name), model_weights(baseline.ckpt / name))


def test_resume_without_last_checkpoint_starts_from_scratch(
    data, baseline, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="tsdiff")
    recorder = _Recorder(monkeypatch)
    metrics = run.main(make_argv(tmp_path, data.good, "--resume"))
    assert "no " in caplog.text and "starting from scratch" in caplog.text
    assert recorder.epochs == ALL_EPOCHS
    assert numbers(metrics) == baseline.numbers


def test_resume_of_a_finished_run_only_evaluates(data, baseline, tmp_path, monkeypatch):
    ckpt = copy_checkpoints(baseline.out, tmp_path)
    before = digests(ckpt)
    recorder = _Recorder(monkeypatch)
    metrics = run.main(make_argv(tmp_path, data.good, "--resume"))
    assert recorder.epochs == []
    assert numbers(metrics) == baseline.numbers
    # checkpoint.pth is not rewritten, nor are the others
    assert digests(ckpt) == before


# ---- 5. non-finite loss ----------------------------------------------------------------------


def test_nan_loss_stops_the_run_and_spares_saved_checkpoints(data, tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints" / SETTING
    nan_call = TRAIN_BATCHES + 3  # joint epoch 2, step 2 (0-based)
    real_loss = iTransformerDiffusion.Model.loss
    calls = {"joint": 0}

    def loss(self, x_enc, x_mark_enc, y, stage):
        total, parts = real_loss(self, x_enc, x_mark_enc, y, stage)
        if stage == "joint" and self.training:
            calls["joint"] += 1
            if calls["joint"] == nan_call:
                total = total * float("nan")
        return total, parts

    snapshot: dict[str, str] = {}

    def on_start(exp, stage, epoch):
        if (stage, epoch) == ("joint", 2):
            snapshot.update(digests(ckpt))

    with monkeypatch.context() as m:
        m.setattr(iTransformerDiffusion.Model, "loss", loss)
        _Recorder(m, on_start=on_start)
        with pytest.raises(FloatingPointError) as info:
            run.main(make_argv(tmp_path, data.good))
    message = str(info.value)
    assert "stage joint" in message and "epoch 2" in message and "step 2" in message
    assert "nan" in message
    # what was saved before the bad step is byte-identical and still usable
    assert set(snapshot) == set(CHECKPOINTS)
    assert digests(ckpt) == snapshot
    assert read_checkpoint(str(ckpt / "checkpoint_last.pth"))["epoch"] == 1
    for name in CHECKPOINTS:
        weights = model_weights(ckpt / name)
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    weights_before = {name: model_weights(ckpt / name) for name in CHECKPOINTS}
    metrics = run.main(make_argv(tmp_path, data.good, "--is_training", "0"))
    assert all(math.isfinite(metrics[k]) for k in METRIC_KEYS)
    # evaluating adds the spread factors of its sampling setting, and touches nothing else
    assert read_checkpoint(str(ckpt / "checkpoint.pth"))["calibration"]
    for name in CHECKPOINTS:
        assert_same_weights(model_weights(ckpt / name), weights_before[name])


# ---- 6. determinism --------------------------------------------------------------------------


def test_identical_runs_give_identical_numbers(data, baseline, tmp_path):
    run.main(make_argv(tmp_path, data.good))
    again = saved_metrics(tmp_path)
    reference = saved_metrics(baseline.out)
    for key in ("mse", "crps", "coverage_50"):
        assert again[key] == reference[key], key
    assert numbers(again) == numbers(reference)
    assert_same_weights(
        model_weights(tmp_path / "checkpoints" / SETTING / "checkpoint.pth"),
        model_weights(baseline.ckpt / "checkpoint.pth"),
    )
