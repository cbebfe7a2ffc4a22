"""utils/plots.py: every figure is a real PNG, plot_run writes its four files, no figure leaks."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from utils import plots
from utils.plots import SAVED_LEVELS

plt = plots.plt
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
L, H, N, W = 24, 12, 4, 7


def assert_png(path) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def fake_quantiles(rng, shape) -> np.ndarray:
    """(5, *shape) increasing along the level axis."""
    center = rng.standard_normal(shape)
    offsets = np.array([-1.6, -0.7, 0.0, 0.7, 1.6]).reshape(-1, *([1] * len(shape)))
    return (center + offsets).astype(np.float32)


def quantile_dict(rng) -> dict[float, np.ndarray]:
    return dict(zip(SAVED_LEVELS, fake_quantiles(rng, (H,))))


def fake_metrics(rng) -> dict:
    nominal = [round(0.1 * k, 1) for k in range(1, 10)]

    def block(scale):
        return {
            "crps": 0.4 * scale,
            "reliability": {"nominal": nominal, "coverage": [min(1, scale * x) for x in nominal]},
            "crps_per_step": list(scale * (0.3 + 0.01 * np.arange(H))),
            "crps_per_variate": list(scale * rng.uniform(0.2, 0.5, N)),
        }

    m = block(0.9)
    m.update(model="iTransformerDiffusion", data_path="ETTh1.csv", pred_len=H)
    m["baselines"] = {"itransformer": block(1.2), "itransformer_gaussian": block(1.05)}
    return m


def test_fan_chart_integer_steps(tmp_path):
    rng = np.random.default_rng(0)
    path = plots.fan_chart(
        tmp_path / "fan.png",
        rng.standard_normal(L),
        rng.standard_normal(H),
        quantile_dict(rng),
        "ETTh1 · OT, test window 0",
    )
    assert path == str(tmp_path / "fan.png")
    assert_png(path)


def test_fan_chart_datetimes_without_truth(tmp_path):
    rng = np.random.default_rng(1)
    dates = pd.date_range("2024-01-01", periods=L + H, freq="h")
    path = plots.fan_chart(
        tmp_path / "future.png",
        rng.standard_normal(L),
        None,
        quantile_dict(rng),
        "OT: forecast of the next 12 hours",
        x_history=dates[:L],
        x_future=dates[L:],
        ylabel="OT (°C)",
    )
    assert_png(path)
    # numpy datetime64 and no history at all
    path = plots.fan_chart(
        tmp_path / "future2.png",
        None,
        rng.standard_normal(H),
        quantile_dict(rng),
        "no history",
        x_future=dates[L:].to_numpy(),
    )
    assert_png(path)


def test_fan_chart_rejects_wrong_lengths(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="truth"):
        plots.fan_chart(tmp_path / "x.png", None, np.zeros(H + 1), quantile_dict(rng), "t")
    with pytest.raises(KeyError, match="missing"):
        plots.fan_chart(tmp_path / "x.png", None, None, {0.5: np.zeros(H)}, "t")


def test_fan_charts_grid(tmp_path):
    rng = np.random.default_rng(3)
    q = fake_quantiles(rng, (W, H, N))
    path = plots.fan_charts_grid(
        tmp_path / "grid.png",
        rng.standard_normal((W, L, N)),
        rng.standard_normal((W, H, N)),
        q,
        SAVED_LEVELS,
        [0, 3, 6],
        [0, 2],
        ["HUFL", "HULL", "MUFL", "OT"],
        "grid",
    )
    assert_png(path)
    path = plots.fan_charts_grid(
        tmp_path / "grid1.png", None, None, q, SAVED_LEVELS, [1], [3], None, "one cell"
    )
    assert_png(path)


def test_reliability_diagram(tmp_path):
    nominal = [0.1 * k for k in range(1, 10)]
    curves = {
        "iTransformerDiffusion": (nominal, [0.9 * x for x in nominal]),
        "iTransformer + Gaussian noise": (nominal, [min(1.0, 1.1 * x) for x in nominal]),
    }
    assert_png(plots.reliability_diagram(tmp_path / "rel.png", curves, "calibration"))


def test_crps_per_step_and_per_variate(tmp_path):
    rng = np.random.default_rng(4)
    curves = {"model": rng.uniform(size=H).tolist(), "baseline": rng.uniform(size=H).tolist()}
    assert_png(plots.crps_per_step(tmp_path / "step.png", curves, "CRPS per step"))
    values = {"model": rng.uniform(size=N).tolist(), "baseline": rng.uniform(size=N).tolist()}
    assert_png(plots.crps_per_variate(tmp_path / "var.png", values, list("abcd"), "per variate"))
    many = {"model": rng.uniform(size=60), "baseline": rng.uniform(size=60)}
    assert_png(plots.crps_per_variate(tmp_path / "var60.png", many, None, "60 variates"))


def test_plot_run(tmp_path):
    rng = np.random.default_rng(5)
    results, figures = tmp_path / "results" / "run", tmp_path / "figures"
    results.mkdir(parents=True)
    np.save(results / "true.npy", rng.standard_normal((W, H, N)).astype(np.float32))
    np.save(results / "quantiles.npy", fake_quantiles(rng, (W, H, N)))
    metrics = fake_metrics(rng)
    paths = plots.plot_run(
        results,
        figures,
        metrics,
        variate_names=["a", "b", "c", "d"],
        history=rng.standard_normal((W, L, N)),
    )
    names = ["fan_charts.png", "reliability.png", "crps_per_step.png", "crps_per_variate.png"]
    assert paths == [str(figures / n) for n in names]
    for p in paths:
        assert_png(p)
    # no history, more windows asked than exist
    paths = plots.plot_run(results, tmp_path / "fig2", metrics, n_windows=20, max_variates=1)
    assert len(paths) == 4
    for p in paths:
        assert_png(p)


def test_evenly_spaced_windows():
    assert plots._evenly_spaced(7, 3) == [0, 3, 6]
    assert plots._evenly_spaced(2, 5) == [0, 1]
    assert plots._evenly_spaced(0, 3) == []


# ---- what the figures show ---------------------------------------------------------------
@pytest.fixture
def drawn(monkeypatch):
    """{file name: [(line label, x, y) ...], [(band label, y values of its outline) ...]} of
    every figure saved, read from the artists before the figure is closed."""
    seen: dict = {}
    save = plots._save

    def capture(fig, path):
        lines, bands = [], []
        for ax in fig.axes:
            for line in ax.get_lines():
                lines.append((line.get_label(), np.asarray(line.get_xdata()),
                              np.asarray(line.get_ydata(), dtype=float)))  # fmt: skip
            for band in ax.collections:
                ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
                bands.append((band.get_label(), ys))
        seen[os.path.basename(os.fspath(path))] = (lines, bands)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return seen


def line(lines, label):
    (found,) = [y for name, _, y in lines if name == label]
    return found


def test_fan_chart_draws_the_given_quantiles_truth_and_history(tmp_path, drawn):
    rng = np.random.default_rng(6)
    history, truth, q = rng.standard_normal(L), rng.standard_normal(H), quantile_dict(rng)
    plots.fan_chart(tmp_path / "fan.png", history, truth, q, "t")
    lines, bands = drawn["fan.png"]
    assert np.allclose(line(lines, "forecast median"), q[0.5])
    assert np.allclose(line(lines, "truth (held out)"), truth)
    assert np.allclose(line(lines, "history (observed)"), history)
    outer = dict(bands)["90% central interval (5–95%)"]
    inner = dict(bands)["50% central interval (25–75%)"]
    for level, band in ((0.05, outer), (0.95, outer), (0.25, inner), (0.75, inner)):
        assert np.isin(q[level].astype(np.float64), band).all(), level
    assert outer.min() == pytest.approx(q[0.05].min()) and outer.max() == pytest.approx(
        q[0.95].max()
    )


def test_plot_run_draws_the_saved_quantiles_and_the_metrics(tmp_path, drawn):
    """The fan charts show quantiles.npy's values of the chosen windows and variates, the
    reliability and CRPS figures the metrics' own curves, for the model and each baseline."""
    rng = np.random.default_rng(7)
    results = tmp_path / "results"
    results.mkdir()
    true = rng.standard_normal((W, H, N)).astype(np.float32)
    q = fake_quantiles(rng, (W, H, N))
    np.save(results / "true.npy", true)
    np.save(results / "quantiles.npy", q)
    metrics = fake_metrics(rng)
    plots.plot_run(results, tmp_path / "fig", metrics, n_windows=3, max_variates=2)
    lines, _ = drawn["fan_charts.png"]
    medians = [y for name, _, y in lines if name == "forecast median"]
    truths = [y for name, _, y in lines if name == "truth (held out)"]
    cells = [(w, v) for w in (0, 3, 6) for v in (0, 1)]
    assert len(medians) == len(cells)
    for (w, v), median, truth in zip(cells, medians, truths):
        assert np.allclose(median, q[2, w, :, v]) and np.allclose(truth, true[w, :, v])
    lines, _ = drawn["reliability.png"]
    assert np.allclose(line(lines, metrics["model"]), metrics["reliability"]["coverage"])
    gaussian = metrics["baselines"]["itransformer_gaussian"]["reliability"]["coverage"]
    assert np.allclose(line(lines, "iTransformer + Gaussian noise"), gaussian)
    lines, _ = drawn["crps_per_step.png"]
    assert np.allclose(line(lines, metrics["model"]), metrics["crps_per_step"])
    point = metrics["baselines"]["itransformer"]["crps_per_step"]
    assert np.allclose(line(lines, "iTransformer (point forecast)"), point)
