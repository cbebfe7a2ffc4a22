"""utils/summarize.py: run discovery, setting parsing, the three table formats and the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from utils.summarize import COLUMNS, collect, main, parse_setting, render, sort_rows

DIFF = (
    "diffusion_forecast_weather_96_iTransformerDiffusion_custom_ftM_sl96_ll48_pl96"
    "_dm128_nh8_el2_df128_fc1_ebtimeF_exp_0"
)
LTF = (
    "long_term_forecast_ETTh1_96_720_iTransformer_ETTh1_ftM_sl96_ll48_pl720"
    "_dm512_nh8_el2_df512_fc1_ebtimeF_test_0"
)


def _metrics(crps: float) -> dict:
    return {
        "mse": 0.4,
        "mae": 0.45,
        "crps": crps,
        "crps_norm": 0.31,
        "coverage_50": 0.48,
        "coverage_90": 0.87,
        "reliability": {"nominal": [0.5], "coverage": [0.48]},
    }


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    (root / DIFF).mkdir(parents=True)
    (root / LTF).mkdir(parents=True)
    (root / "empty_folder").mkdir()
    m = _metrics(0.25)
    m.update(
        mse=0.171234567,
        mae=0.21,
        baselines={"itransformer": _metrics(0.3), "itransformer_gaussian": _metrics(0.27)},
        sampler="ddim",
        sampling_steps=50,
        n_samples=100,
        model="iTransformerDiffusion",
        data_path="weather.csv",
        pred_len=96,
    )
    (root / DIFF / "metrics.json").write_text(json.dumps(m))
    np.save(root / DIFF / "metrics.npy", np.array([9.0, 9.0, 9.0, 9.0, 9.0]))  # ignored
    np.save(root / LTF / "metrics.npy", np.array([0.45, 0.47, 0.69, 10.0, 2.0], np.float32))
    return root


def test_parse_setting():
    p = parse_setting(DIFF)
    assert (p["task"], p["model_id"], p["model"], p["data"]) == (
        "diffusion_forecast",
        "weather_96",
        "iTransformerDiffusion",
        "custom",
    )
    assert (p["features"], p["seq_len"], p["label_len"], p["pred_len"]) == ("M", 96, 48, 96)
    p = parse_setting(LTF)
    assert (p["task"], p["model_id"], p["model"], p["data"], p["pred_len"]) == (
        "long_term_forecast",
        "ETTh1_96_720",
        "iTransformer",
        "ETTh1",
        720,
    )
    direct = DIFF.replace("iTransformerDiffusion_", "iTransformerDiffusionDirect_")
    assert parse_setting(direct)["model"] == "iTransformerDiffusionDirect"
    assert parse_setting("not_a_setting") is None


def test_collect(results):
    rows = collect(results)
    assert [r["setting"] for r in rows] == [DIFF, LTF]
    diff, ltf = rows
    assert (diff["model"], diff["data"], diff["horizon"]) == (
        "iTransformerDiffusion",
        "weather",
        96,
    )
    assert (diff["sampler"], diff["steps"], diff["samples"]) == ("ddim", 50, 100)
    assert diff["MSE"] == pytest.approx(0.171234567)
    assert (diff["CRPS"], diff["crps_itr"], diff["crps_itr_gauss"]) == (0.25, 0.3, 0.27)
    assert (diff["cov50"], diff["cov90"], diff["CRPS_norm"]) == (0.48, 0.87, 0.31)
    assert (ltf["model"], ltf["data"], ltf["horizon"]) == ("iTransformer", "ETTh1", 720)
    assert ltf["MSE"] == pytest.approx(0.47) and ltf["MAE"] == pytest.approx(0.45)
    assert all(ltf[c] is None for c in ("sampler", "steps", "CRPS", "cov90", "crps_itr"))
    assert collect(results / "missing") == []


def test_sort_rows(results):
    rows = collect(results)
    assert [r["setting"] for r in sort_rows(rows, "horizon")] == [DIFF, LTF]
    assert [r["setting"] for r in sort_rows(rows, "mse")] == [DIFF, LTF]
    assert [r["setting"] for r in sort_rows(rows, "MAE")] == [DIFF, LTF]
    assert sort_rows(rows, "crps")[-1]["setting"] == LTF  # blanks last
    with pytest.raises(ValueError, match="unknown column"):
        sort_rows(rows, "nope")


def test_markdown(results):
    text = render(collect(results))
    lines = text.splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == list(COLUMNS)
    assert set(lines[1].replace("|", "").replace(" ", "")) <= {"-", ":"}
    assert DIFF in text and LTF in text
    assert "0.1712" in text and "0.4700" in text and "0.2500" in text


def test_csv_round_trip(results):
    rows = collect(results)
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert [p["setting"] for p in parsed] == [DIFF, LTF]
    for row, back in zip(rows, parsed):
        for col in ("MSE", "MAE", "CRPS", "cov90", "crps_itr_gauss"):
            if row[col] is None:
                assert back[col] == ""
            else:
                assert float(back[col]) == pytest.approx(row[col], abs=5e-5)
    assert parsed[0]["horizon"] == "96" and parsed[1]["steps"] == ""


def test_latex(results):
    text = render(collect(results), "latex")
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text
    assert "\\begin{tabular}" in text and "\\end{tabular}" in text
    assert DIFF.replace("_", "\\_") in text
    assert "crps\\_itr\\_gauss" in text
    assert "_" not in text.replace("\\_", "")
    with pytest.raises(ValueError, match="unknown format"):
        render([], "html")


def _cli(repo_root, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "utils.summarize", *map(str, args)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli(results, repo_root):
    proc = _cli(repo_root, results)
    assert proc.returncode == 0, proc.stderr
    assert DIFF in proc.stdout and LTF in proc.stdout
    assert proc.stdout.splitlines()[0].startswith("| setting")


def test_cli_empty_directory_fails(tmp_path, repo_root):
    proc = _cli(repo_root, tmp_path)
    assert proc.returncode == 1
    assert "no run found" in proc.stderr
    assert proc.stdout == ""


def test_main_in_process(results, capsys):
    assert main([str(results), "--format", "csv", "--sort", "MSE"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(COLUMNS)
    assert main([str(results / "missing")]) == 1
    with pytest.raises(SystemExit):
        main([str(results), "--sort", "bogus"])


def test_baseline_rows_and_column_subset(results, capsys):
    """--baselines adds one row per baseline with all its metrics (duplicates kept once);
    --columns picks and orders the columns."""
    from utils.summarize import with_baselines

    rows = with_baselines(collect(results))
    models = [r["model"] for r in rows if r["setting"] == DIFF]  # not the LTF run
    assert models == ["iTransformerDiffusion", "iTransformer", "iTransformer+Gaussian"]
    gauss = next(r for r in rows if r["model"] == "iTransformer+Gaussian")
    assert gauss["CRPS"] == 0.27 and gauss["cov90"] == 0.87 and gauss["data"] == "weather"
    twice = with_baselines(collect(results) * 2)  # both runs again, their baselines once
    assert len(twice) == len(rows) + 2
    argv = [str(results), "--baselines", "--columns", "model,data,CRPS", "--format", "csv"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model,data,CRPS"
    assert "iTransformer+Gaussian,weather,0.2700" in lines
    with pytest.raises(SystemExit):
        main([str(results), "--columns", "model,bogus"])


# ---- settings with the data file's stem, and running from anywhere ----------------------------


def test_parse_setting_with_the_data_files_stem(tmp_path):
    stem = DIFF.replace("_custom_ftM_", "_custom_co2_weekly_ftM_")
    p = parse_setting(stem)
    assert (p["model_id"], p["model"], p["data"], p["stem"]) == (
        "weather_96",
        "iTransformerDiffusion",
        "custom",
        "co2_weekly",
    )
    assert (p["features"], p["pred_len"]) == ("M", 96)
    other_ett = LTF.replace("_ETTh1_ftM_", "_ETTh1_ETTh2_ftM_")
    assert (parse_setting(other_ett)["data"], parse_setting(other_ett)["stem"]) == (
        "ETTh1",
        "ETTh2",
    )
    assert parse_setting(LTF)["stem"] is None
    # the table shows the file's stem
    root = tmp_path / "results"
    (root / stem).mkdir(parents=True)
    np.save(root / stem / "metrics.npy", np.array([0.4, 0.3, 0.5, 1.0, 1.0]))
    (row,) = collect(root)
    assert (row["data"], row["horizon"]) == ("co2_weekly", 96)


def test_default_results_dir_does_not_depend_on_the_folder(tmp_path, monkeypatch, repo_root):
    from utils.summarize import default_results_dir

    monkeypatch.chdir(tmp_path)
    assert default_results_dir() == str(repo_root / "results")  # nothing here: the repo's
    (tmp_path / "results").mkdir()
    assert default_results_dir() == "results"  # where run.py, started here, writes


def test_run_py_summarize_in_process(results, capsys, tmp_path, monkeypatch):
    import run

    # were --summarize ignored, this would train: make that fail fast, and write nothing here
    monkeypatch.chdir(tmp_path)
    nowhere = ["--root_path", str(tmp_path / "nowhere")]
    assert run.main(["--summarize", str(results), *nowhere]) == {}
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| setting") and DIFF in out and LTF in out
    assert "Args:" not in out
    with pytest.raises(SystemExit) as info:
        run.main(["--summarize", str(results / "missing"), *nowhere])
    assert info.value.code == 1


def test_summarize_from_another_folder(results, repo_root, tmp_path):
    """``python /abs/run.py --summarize`` and ``python /abs/utils/summarize.py`` from a folder
    outside the repository, without PYTHONPATH; run.py's default is ./results/ there."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "results").symlink_to(results, target_is_directory=True)
    for argv in (
        [repo_root / "run.py", "--summarize"],
        [repo_root / "utils" / "summarize.py", results, "--format", "csv"],
    ):
        proc = subprocess.run(
            [sys.executable, *map(str, argv)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert DIFF in proc.stdout and LTF in proc.stdout
