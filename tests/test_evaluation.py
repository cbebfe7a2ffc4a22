"""The evaluation's streamed scores equal the one-shot scores of the whole split, whatever the
chunking and the order in which batches arrive (as DDP ranks deliver them)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from exp import evaluation
from exp.evaluation import QUANTILES_SAVED, Evaluation
from utils.metrics import ProbMetricAccumulator, window_scores

S, H, N, BATCH, WINDOWS = 8, 6, 3, 5, 13  # three batches, the last one short


class Scaler:
    scale_ = np.array([2.0, 0.5, 3.0])
    mean_ = np.array([1.0, -4.0, 10.0])


def split(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = torch.randn(S, WINDOWS, H, N, generator=g)
    base = torch.randn(S, WINDOWS, H, N, generator=g) * 1.5
    point = torch.randn(WINDOWS, H, N, generator=g)
    true = torch.randn(WINDOWS, H, N, generator=g)
    return model, base, point, true


def evaluate(folder, order, chunk_values=None, monkeypatch=None, inverse=False):
    if chunk_values is not None:
        monkeypatch.setattr(evaluation, "CHUNK_VALUES", chunk_values)
    args = SimpleNamespace(features="M", pred_len=H, n_samples=S, save_samples=True,
                           inverse=inverse, batch_size=BATCH)  # fmt: skip
    ev = Evaluation(args, Scaler(), WINDOWS, str(folder), "model", ("base",))
    model, base, point, true = split()
    for index in order:
        rows = slice(index * BATCH, (index + 1) * BATCH)
        methods = {"model": (model[:, rows], None), "base": (base[:, rows], point[rows])}
        ev.add_batch(index, index * BATCH, methods, true[rows], seconds=1.0)
    result = ev.finish()
    scores = dict(np.load(folder / "window_scores.npz"))
    return result, scores


@pytest.mark.parametrize("inverse", [False, True])
def test_streamed_scores_equal_the_one_shot_scores(tmp_path, monkeypatch, inverse):
    # three windows per chunk: batches of five are scored in two chunks each
    result, scores = evaluate(tmp_path, [0, 1, 2], S * H * N * 3, monkeypatch, inverse)
    model, base, point, true = split()
    for name, samples, pt in (("model", model, None), ("base", base, point)):
        one = ProbMetricAccumulator(variogram_over="variates")
        one.update_samples(samples, true, point=pt)
        expected = one.compute()
        got = result if name == "model" else result["baselines"]["base"]
        for key in ("mse", "mae", "crps", "crps_fair", "coverage_90", "energy_score",
                    "variogram_score"):  # fmt: skip
            assert got[key] == pytest.approx(expected[key], rel=1e-12), (name, key)
        per_window = window_scores(samples, true, over="variates")
        for key, values in per_window.items():
            np.testing.assert_allclose(scores[f"{name}/{key}"], values.numpy(), rtol=1e-12)
        # crps_norm and crps_sum are ratios in original units
        scale, shift = torch.tensor(Scaler.scale_), torch.tensor(Scaler.mean_)
        orig = ProbMetricAccumulator(joint_scores=False)
        pt_orig = None if pt is None else pt.double() * scale + shift
        orig.update_samples(
            samples.double() * scale + shift, true.double() * scale + shift, point=pt_orig
        )
        for key in ("crps_norm", "crps_sum"):
            assert got[key] == pytest.approx(orig.compute()[key], rel=1e-6), (name, key)
        if inverse:  # every metric in original units as well
            units = result["original_units"]
            got_orig = units if name == "model" else units["baselines"]["base"]
            for key in ("crps", "mae", "crps_norm", "coverage_90"):
                assert got_orig[key] == pytest.approx(orig.compute()[key], rel=1e-6), (name, key)
        else:
            assert "original_units" not in result
    assert result["n_windows"] == WINDOWS and result["seconds_sampling"] == 3.0
    saved = np.load(tmp_path / "quantiles.npy")
    expected_q = np.quantile(model.numpy(), QUANTILES_SAVED, axis=0)
    np.testing.assert_allclose(saved, expected_q, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npy"), model.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "true.npy"), true.numpy())
    assert json.loads((tmp_path / "metrics.json").read_text())["crps"] == result["crps"]


def test_batch_order_and_chunking_do_not_change_any_number(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    in_order, scores = evaluate(tmp_path / "a", [0, 1, 2])
    shuffled, shuffled_scores = evaluate(tmp_path / "b", [2, 0, 1], S * H * N * 2, monkeypatch)
    for key in ("crps", "energy_score", "crps_norm", "mse", "coverage_50"):
        assert shuffled[key] == pytest.approx(in_order[key], rel=1e-13)
    for key, values in scores.items():
        np.testing.assert_allclose(shuffled_scores[key], values, rtol=1e-13)


def test_a_missing_batch_is_an_error(tmp_path):
    args = SimpleNamespace(features="M", pred_len=H, n_samples=S, save_samples=False,
                           inverse=False, batch_size=BATCH)  # fmt: skip
    ev = Evaluation(args, Scaler(), WINDOWS, str(tmp_path), "model", ())
    model, _, _, true = split()
    ev.add_batch(0, 0, {"model": (model[:, :BATCH], None)}, true[:BATCH], 0.0)
    with pytest.raises(RuntimeError, match="evaluated 5 windows, expected 13"):
        ev.finish()
