"""Which post-hoc recalibration of the diffusion model's ensemble lowers its CRPS?

Samples a trained checkpoint's raw ensembles (no spread factors) on every validation and test
window, fits each recalibration on the first half of the validation windows, and prints CRPS and
50%/90% coverage on the second half and on the test windows, beside the residual-quantile
baseline (the strongest simple baseline on ETTh1):

* ``variate scale``: mean + s_n·(x − mean), one factor per variate (what ``--calibrate_spread
  variate`` does);
* ``band scale``: one factor per variate and quarter of the horizon;
* ``+ PIT remap``: after the variate scale, each point's members are moved, rank for rank, to
  the ensemble's quantiles at levels fitted so that the truth's PIT on the fitting windows is
  uniform (quantile recalibration; the members keep their ranks, so the joint order survives).

    python scripts/recalibration_study.py --checkpoint checkpoints/<setting>/checkpoint.pth

About 6 minutes for the quickstart's checkpoint on a 2-core CPU (``--windows`` evenly spaced
windows per split make it shorter).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exp.calibration import apply_spread, best_scale, crps_by_spread_scale  # noqa: E402
from forecaster import Forecaster  # noqa: E402
from utils.metrics import ProbMetricAccumulator, sort_samples  # noqa: E402

BANDS = 4


def draw(exp, split: str, windows: int | None) -> dict[str, torch.Tensor]:
    """Raw model samples, residual-quantile baseline samples and truth of a split."""
    data, _ = exp._get_data(split)
    picks = np.arange(len(data))
    if windows:
        picks = np.unique(np.linspace(0, len(data) - 1, windows).round().astype(int))
    subset = torch.utils.data.Subset(data, picks.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=exp.args.batch_size)
    exp.use_data(data)
    exp.spread_scale = None
    out = {"model": [], "baseline": [], "true": []}
    for index, batch in enumerate(loader):
        methods, true, _ = exp._forecast_batch(batch, (1 << 20) * (split == "val") + index)
        out["model"].append(methods[exp.args.model][0].float().cpu())
        out["baseline"].append(methods["residual_quantiles"][0].float().cpu())
        out["true"].append(true.float().cpu())
        print(f"{split}: {min(len(picks), (index + 1) * exp.args.batch_size)} windows", end="\r")
    print()
    return {k: torch.cat(v, dim=0 if k == "true" else 1) for k, v in out.items()}


def fit_scale(x: torch.Tensor, y: torch.Tensor, bands: int) -> torch.Tensor:
    """Spread factors (H, N), one per variate in each of ``bands`` equal parts of the horizon,
    chosen as ``--calibrate_spread variate`` chooses them."""
    H = y.shape[1]
    parts = []
    for band in range(bands):
        steps = slice(band * H // bands, (band + 1) * H // bands)
        total = crps_by_spread_scale(x[:, :, steps], y[:, steps])
        parts.append(best_scale(total, "variate")[0].expand(steps.stop - steps.start, -1))
    return torch.cat(parts)


def rescale(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return apply_spread(x.clone(), factors)


def pit(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The truth's PIT under each point's ensemble (mid-rank), (B, H, N)."""
    below = (x < y).sum(0).double()
    ties = (x == y).sum(0).double()
    return (below + 0.5 * ties) / x.shape[0]


def fit_levels(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Levels (S,) at which the ensemble's quantiles make the fitting windows' PIT uniform."""
    u = pit(x, y).flatten()
    keep = torch.randperm(u.numel(), generator=torch.Generator().manual_seed(0))[: 1 << 21]
    return torch.quantile(u[keep], (torch.arange(x.shape[0]) + 0.5).double() / x.shape[0])


def remap(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each member moved to the ensemble's quantile at its rank's level (linear between order
    statistics, extrapolated past the ends)."""
    S = x.shape[0]
    order = x.argsort(0)
    xs = sort_samples(x)
    pos = levels * S - 0.5
    lo = pos.floor().clamp(0, S - 2).long()
    w = (pos - lo).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
    values = xs[lo] * (1 - w) + xs[lo + 1] * w
    return torch.empty_like(x).scatter_(0, order, values)


def report(name: str, x: torch.Tensor, y: torch.Tensor) -> str:
    acc = ProbMetricAccumulator(joint_scores=False)
    acc.update_samples(x, y)
    m = acc.compute()
    return f"| {name} | {m['crps']:.4f} | {m['coverage_50']:.3f} | {m['coverage_90']:.3f} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--windows", type=int, default=None, help="per split (default: all)")
    p.add_argument("--root_path", default=None, help="the data's folder, if it moved")
    a = p.parse_args()
    torch.manual_seed(0)
    exp = Forecaster.load(a.checkpoint)._exp
    if a.root_path:
        exp.args.root_path = a.root_path
    val, test = draw(exp, "val", a.windows), draw(exp, "test", a.windows)
    half = val["true"].shape[0] // 2
    fx, fy = val["model"][:, :half], val["true"][:half]
    variate = fit_scale(fx, fy, 1)
    band = fit_scale(fx, fy, BANDS)
    levels = fit_levels(rescale(fx, variate), fy)
    print(f"fitted on {half} validation windows; variate factors "
          f"{np.array2string(variate[0].numpy(), precision=3)}")  # fmt: skip
    for split, data in (("validation, second half", {k: v[..., half:, :, :] if k != "true"
                         else v[half:] for k, v in val.items()}), ("test", test)):  # fmt: skip
        x, y = data["model"], data["true"]
        print(f"\n{split} ({y.shape[0]} windows)")
        print("| ensemble | CRPS | cov 50 | cov 90 |\n|---|---:|---:|---:|")
        print(report("raw", x, y))
        print(report("variate scale", rescale(x, variate), y))
        print(report(f"band scale ({BANDS} bands)", rescale(x, band), y))
        print(report("variate scale + PIT remap", remap(rescale(x, variate), levels), y))
        print(report("baseline: residual quantiles", data["baseline"], y))


if __name__ == "__main__":
    main()
