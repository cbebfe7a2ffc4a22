"""Figures for probabilistic forecasts: fan charts, reliability diagrams, CRPS profiles.

Every function writes one PNG (matplotlib's Agg backend, no display needed), closes its figure
and returns the path it wrote. Values are in the data's normalised units (what the
``diffusion_forecast`` task saves) unless another unit label is passed.

* :func:`fan_chart` -- one series: history, truth, median and 50 % / 90 % central bands.
* :func:`fan_charts_grid` -- the same for several test windows (rows) × variates (columns).
* :func:`reliability_diagram` -- nominal central-interval level against empirical coverage.
* :func:`crps_per_step` / :func:`crps_per_variate` -- where in the horizon, and on which
  variates, the probabilistic error sits.
* :func:`plot_run` -- all four figures for one ``results/<setting>/`` folder.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: Quantile levels of ``quantiles.npy`` (``exp.exp_diffusion_forecast.QUANTILES_SAVED``).
SAVED_LEVELS: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
BASELINE_LABELS = {
    "itransformer": "iTransformer (point forecast)",
    "itransformer_gaussian": "iTransformer + Gaussian noise",
    "scaled_gaussian": "iTransformer + Gaussian, lookback-scaled",
    "residual_quantiles": "iTransformer + residual quantiles",
}
NORMALISED = "normalised units"

_COLORS = {
    "history": "0.35",
    "truth": "black",
    "forecast": "tab:blue",
}
_BAND_ALPHA = {90: 0.18, 50: 0.38}
_DPI = 110


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
@contextmanager
def _closing_on_error(fig):
    """Close ``fig`` if drawing fails (a bad argument must not leave a figure open)."""
    try:
        yield fig
    except BaseException:
        plt.close(fig)
        raise


def _save(fig, path) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    try:
        fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _quantile(quantiles: Mapping[float, np.ndarray], level: float) -> np.ndarray:
    """``quantiles[level]`` with a float tolerance (keys may be 0.05 or np.float32(0.05))."""
    for key, value in quantiles.items():
        if abs(float(key) - level) < 1e-6:
            return np.asarray(value, dtype=float)
    raise KeyError(f"quantile level {level} missing; levels given: {sorted(map(float, quantiles))}")


def _is_datetime(x) -> bool:
    if x is None or len(x) == 0:
        return False
    if np.asarray(x).dtype.kind == "M":
        return True
    first = x[0] if not hasattr(x, "iloc") else x.iloc[0]
    return isinstance(first, (_dt.date, np.datetime64))


def _default_x(n_history: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer steps: history at -L+1 .. 0 (0 = last observation), forecast at 1 .. H."""
    return np.arange(-n_history + 1, 1), np.arange(1, horizon + 1)


def _draw_fan(ax, history, truth, quantiles, x_history, x_future) -> None:
    """Draw one fan chart on ``ax`` (no labels but the artists' legend names)."""
    q05, q25, q50, q75, q95 = (_quantile(quantiles, lv) for lv in SAVED_LEVELS)
    horizon = len(q50)
    n_hist = 0 if history is None else len(history)
    default_h, default_f = _default_x(n_hist, horizon)
    x_history = default_h if x_history is None else x_history
    x_future = default_f if x_future is None else x_future
    if len(x_future) != horizon:
        raise ValueError(f"x_future has {len(x_future)} values for a horizon of {horizon}")
    if history is not None:
        if len(x_history) != n_hist:
            raise ValueError(f"x_history has {len(x_history)} values for {n_hist} observations")
        ax.plot(x_history, history, color=_COLORS["history"], lw=1.1, label="history (observed)")
    c = _COLORS["forecast"]
    ax.fill_between(
        x_future,
        q05,
        q95,
        color=c,
        alpha=_BAND_ALPHA[90],
        lw=0,
        label="90% central interval (5–95%)",
    )
    ax.fill_between(
        x_future,
        q25,
        q75,
        color=c,
        alpha=_BAND_ALPHA[50],
        lw=0,
        label="50% central interval (25–75%)",
    )
    ax.plot(x_future, q50, color=c, lw=1.6, label="forecast median")
    if truth is not None:
        truth = np.asarray(truth, dtype=float)
        if len(truth) != horizon:
            raise ValueError(f"truth has {len(truth)} values for a horizon of {horizon}")
        ax.plot(x_future, truth, color=_COLORS["truth"], lw=1.1, ls="--", label="truth (held out)")
    origin = x_history[-1] if history is not None and n_hist else x_future[0]
    ax.axvline(origin, color="tab:red", lw=1.0, ls=":", label="forecast start")
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------------------------------
# single figures
# ---------------------------------------------------------------------------------------
def fan_chart(
    path,
    history,
    truth,
    quantiles: Mapping[float, np.ndarray],
    title: str,
    x_history=None,
    x_future=None,
    ylabel: str = f"value ({NORMALISED})",
    xlabel: str | None = None,
) -> str:
    """Fan chart of one forecast.

    ``history`` (L,) or None, ``truth`` (H,) or None, ``quantiles`` {level: (H,)} with at least
    the levels 0.05, 0.25, 0.5, 0.75 and 0.95. ``x_history`` / ``x_future`` are the x values
    (datetimes for a forecast of the real future, or integers); by default integer steps with
    0 = the last observation. A dotted vertical line marks the forecast start.
    """
    history = None if history is None else np.asarray(history, dtype=float)
    fig, ax = plt.subplots(figsize=(9, 4))
    with _closing_on_error(fig):
        _draw_fan(ax, history, truth, quantiles, x_history, x_future)
        dated = _is_datetime(x_future)
        if xlabel is None:
            xlabel = "time" if dated else "time step (0 = last observation)"
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if dated:
            fig.autofmt_xdate()
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.85)
    return _save(fig, path)


def fan_charts_grid(
    path,
    histories,
    truths,
    quantiles,
    levels: Sequence[float],
    windows: Sequence[int],
    variates: Sequence[int],
    variate_names: Sequence[str] | None,
    title: str,
    ylabel: str = f"value ({NORMALISED})",
) -> str:
    """A grid of fan charts: one row per test window, one column per variate.

    ``histories`` (W, L, N') or None, ``truths`` (W, H, N') or None, ``quantiles`` (Q, W, H, N')
    at ``levels`` (must include 0.05, 0.25, 0.5, 0.75, 0.95). ``windows`` and ``variates`` index
    the W and N' axes; ``variate_names[j]`` names variate ``j`` (default "variate j").
    """
    levels = [float(lv) for lv in levels]
    if len(levels) != quantiles.shape[0]:
        raise ValueError(f"{len(levels)} levels for {quantiles.shape[0]} quantile arrays")
    windows, variates = list(windows), list(variates)
    if not windows or not variates:
        raise ValueError("need at least one window and one variate")
    rows, cols = len(windows), len(variates)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols + 0.6, 2.6 * rows + 1.0), squeeze=False, sharex=True
    )
    with _closing_on_error(fig):
        for r, w in enumerate(windows):
            for c, v in enumerate(variates):
                ax = axes[r, c]
                hist = None if histories is None else np.asarray(histories[w, :, v], dtype=float)
                truth = None if truths is None else np.asarray(truths[w, :, v], dtype=float)
                qs = {
                    lv: np.asarray(quantiles[i, w, :, v], dtype=float)
                    for i, lv in enumerate(levels)
                }
                _draw_fan(ax, hist, truth, qs, None, None)
                name = variate_names[v] if variate_names is not None else f"variate {v}"
                ax.set_title(f"test window {w} · {name}", fontsize=9)
                ax.tick_params(labelsize=8)
        fig.suptitle(title)
        fig.supxlabel("time step (0 = last observation before the forecast)", fontsize=10)
        fig.supylabel(ylabel, fontsize=10)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(len(labels), 6),
            fontsize=8,
            bbox_to_anchor=(0.5, -0.06),
        )
        fig.tight_layout()
    return _save(fig, path)


def reliability_diagram(
    path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str
) -> str:
    """Nominal central-interval level against the observed fraction of truths inside it.

    ``curves`` maps a name (the model, a baseline) to ``(nominal levels, empirical coverage)``.
    """
    fig, ax = plt.subplots(figsize=(5.6, 5.6))
    with _closing_on_error(fig):
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1.0, label="perfect calibration")
        markers = "osD^v<>"
        for i, (name, (nominal, empirical)) in enumerate(curves.items()):
            ax.plot(nominal, empirical, marker=markers[i % len(markers)], ms=5, lw=1.4, label=name)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            aspect="equal",
            title=title,
            xlabel="nominal level of the central prediction interval",
            ylabel="empirical coverage (fraction of truths inside)",
        )
        ax.text(
            0.03,
            0.97,
            "above the diagonal = intervals too wide\n(under-confident)",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            color="0.25",
        )
        ax.text(
            0.97,
            0.03,
            "below the diagonal = intervals too narrow\n(over-confident)",
            transform=ax.transAxes,
            va="bottom",
            ha="right",
            fontsize=8,
            color="0.25",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(0.02, 0.72), fontsize=8)
    return _save(fig, path)


def crps_per_step(
    path,
    curves: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str = f"CRPS ({NORMALISED}, lower is better)",
) -> str:
    """CRPS against the horizon step (1 .. H), one line per model / baseline."""
    fig, ax = plt.subplots(figsize=(8, 4))
    with _closing_on_error(fig):
        for name, values in curves.items():
            values = np.asarray(values, dtype=float)
            steps = np.arange(1, len(values) + 1)
            ax.plot(
                steps, values, lw=1.4, marker="o" if len(values) <= 30 else None, ms=3, label=name
            )
        ax.set(
            title=title, xlabel="forecast horizon step (1 = first predicted step)", ylabel=ylabel
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def crps_per_variate(
    path,
    values: Mapping[str, Sequence[float]],
    variate_names: Sequence[str] | None,
    title: str,
    ylabel: str = f"CRPS ({NORMALISED}, lower is better)",
) -> str:
    """Grouped bars: CRPS of each variate, one bar per model / baseline in each group.

    With more than 40 variates the names are dropped and the x axis is the variate index.
    """
    names = list(values)
    arrays = [np.asarray(values[k], dtype=float) for k in names]
    n_var = len(arrays[0]) if arrays else 0
    if any(len(a) != n_var for a in arrays):
        raise ValueError("every curve needs one value per variate")
    x = np.arange(n_var)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.45 * n_var * max(len(names), 1)), 30.0), 4.2))
    with _closing_on_error(fig):
        for i, (name, a) in enumerate(zip(names, arrays)):
            ax.bar(x + (i - (len(names) - 1) / 2) * width, a, width, label=name)
        if n_var <= 40:
            labels = variate_names if variate_names is not None else [str(j) for j in x]
            ax.set_xticks(
                x,
                labels,
                rotation=45 if n_var > 8 else 0,
                ha="right" if n_var > 8 else "center",
                fontsize=8,
            )
            xlabel = "variate" if variate_names is not None else "variate index"
        else:
            xlabel = "variate index"
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------
# one run folder
# ---------------------------------------------------------------------------------------
def _evenly_spaced(n_total: int, n: int) -> list[int]:
    if n_total <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n_total - 1, min(n, n_total)).round()})


def _run_label(metrics: Mapping) -> str:
    model = metrics.get("model", "model")
    data = metrics.get("data_path")
    data = os.path.splitext(os.path.basename(data))[0] if data else None
    horizon = metrics.get("pred_len")
    parts = [str(model)]
    if data:
        parts.append(f"on {data}")
    if horizon:
        parts.append(f"(horizon {horizon})")
    return " ".join(parts)


def plot_run(
    folder_results,
    folder_figures,
    metrics: Mapping,
    variate_names: Sequence[str] | None = None,
    history=None,
    n_windows: int = 3,
    max_variates: int = 3,
) -> list[str]:
    """Write ``fan_charts.png``, ``reliability.png``, ``crps_per_step.png`` and
    ``crps_per_variate.png`` for one diffusion run; return their paths.

    Reads ``true.npy`` (W, H, N') and ``quantiles.npy`` (5, W, H, N', levels 0.05 .. 0.95) from
    ``folder_results``; ``metrics`` is the run's ``metrics.json`` dict; ``history`` (W, L, N'),
    if given, is drawn before each forecast. The fan charts show ``n_windows`` evenly spaced
    test windows and the first ``max_variates`` variates.
    """
    true = np.load(os.path.join(folder_results, "true.npy"), mmap_mode="r")
    quantiles = np.load(os.path.join(folder_results, "quantiles.npy"), mmap_mode="r")
    if quantiles.shape[0] != len(SAVED_LEVELS) or quantiles.shape[1:] != true.shape:
        raise ValueError(
            f"quantiles.npy {quantiles.shape} does not match true.npy {true.shape} "
            f"with {len(SAVED_LEVELS)} levels"
        )
    os.makedirs(folder_figures, exist_ok=True)
    label = _run_label(metrics)
    model = str(metrics.get("model", "model"))
    baselines = metrics.get("baselines", {})
    n_var = true.shape[2]
    names = list(variate_names) if variate_names is not None else None
    if names is not None and len(names) != n_var:
        raise ValueError(f"{len(names)} variate names for {n_var} variates")
    windows = _evenly_spaced(true.shape[0], n_windows)
    variates = list(range(min(max_variates, n_var)))
    paths = [
        fan_charts_grid(
            os.path.join(folder_figures, "fan_charts.png"),
            history,
            true,
            quantiles,
            SAVED_LEVELS,
            windows,
            variates,
            names,
            f"{label}: test-window forecasts (median, 50% and 90% central intervals)",
        )
    ]
    curves = {model: (metrics["reliability"]["nominal"], metrics["reliability"]["coverage"])}
    step_curves = {model: metrics["crps_per_step"]}
    var_curves = {model: metrics["crps_per_variate"]}
    for key, result in baselines.items():
        name = BASELINE_LABELS.get(key, key)
        step_curves[name] = result["crps_per_step"]
        var_curves[name] = result["crps_per_variate"]
        if result.get("sharpness_90", 1.0) > 0:  # a point mass has no intervals to draw
            curves[name] = (result["reliability"]["nominal"], result["reliability"]["coverage"])
    paths.append(
        reliability_diagram(
            os.path.join(folder_figures, "reliability.png"),
            curves,
            f"Calibration of {label}",
        )
    )
    paths.append(
        crps_per_step(
            os.path.join(folder_figures, "crps_per_step.png"),
            step_curves,
            f"CRPS per horizon step, {label} (test set mean)",
        )
    )
    paths.append(
        crps_per_variate(
            os.path.join(folder_figures, "crps_per_variate.png"),
            var_curves,
            names,
            f"CRPS per variate, {label} (test set mean)",
        )
    )
    return paths
