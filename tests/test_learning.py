"""The denoiser learns a distribution with a known answer.

Each window's future is a bimodal regime: the whole horizon sits at +A or −A (a fair coin per
window and variate) plus small noise, whatever the lookback. The oracle's samples come from
that mixture. A Gaussian with the right mean and variance, drawn independently per point (the
"point forecast + noise" baseline), cannot place its mass on the two modes nor keep a window's
steps together. A trained denoiser must recover both modes, come close to the oracle's CRPS and
beat the Gaussian on CRPS and on the energy score over each window's (H, N) block.
"""

from __future__ import annotations

import pytest
import torch

from models.iTransformerDiffusionDirect import Model as DirectModel
from utils.args import build_parser, check_args
from utils.metrics import crps_ensemble, energy_score

L, H, N, A, NOISE = 16, 8, 2, 1.5, 0.15


def _model():
    parser = build_parser()
    argv = (
        f"--task_name diffusion_forecast --model iTransformerDiffusionDirect --seq_len {L} "
        f"--label_len 8 --pred_len {H} --d_model 16 --d_ff 16 --n_heads 2 --e_layers 1 "
        "--cond_dim 32 --unet_channels 16,32 --diffusion_steps 100 --loss_lambda 0 "
        "--clip_x0 0"
    )
    args = parser.parse_args(argv.split())
    check_args(parser, args)
    args.enc_in = args.dec_in = args.c_out = N
    torch.manual_seed(0)
    return DirectModel(args)


def _windows(batch: int, generator: torch.Generator):
    """Lookbacks with mean 0 and std 1 (so normalised units are the data's), bimodal futures."""
    x = torch.ones(batch, L, N)
    x[:, ::2] = -1.0
    x_mark = torch.zeros(batch, L, 4)
    sign = torch.randint(0, 2, (batch, 1, N), generator=generator) * 2.0 - 1.0
    y = A * sign + NOISE * torch.randn(batch, H, N, generator=generator)
    return x, x_mark, y


def _oracle(S: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    return _windows(S * batch, generator)[2].view(S, batch, H, N)


@pytest.fixture(scope="module")
def trained():
    model = _model()
    g = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam(model.denoiser.parameters(), lr=3e-3)
    model.train()
    for _ in range(400):
        x, x_mark, y = _windows(128, g)
        loss, _ = model.loss(x, x_mark, y, stage="joint")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_the_denoiser_learns_a_bimodal_regime(trained):
    g = torch.Generator().manual_seed(2)
    x, x_mark, y = _windows(64, g)
    S = 64
    _, _, samples = trained.predict(
        x, x_mark, n_samples=S, sampler="ddim", steps=20, generator=torch.Generator().manual_seed(3)
    )  # (S, B, H, N)
    level = samples.mean(2)  # each sample's level over the horizon, (S, B, N)
    near_a_mode = ((level.abs() - A).abs() < 0.5).float().mean().item()
    positive = (level > 0).float().mean().item()
    assert near_a_mode > 0.85, f"only {near_a_mode:.2f} of the samples sit near ±{A}"
    assert 0.3 < positive < 0.7, f"{positive:.2f} of the samples are positive: a mode is lost"

    oracle = _oracle(S, len(y), g)
    sigma = (A**2 + NOISE**2) ** 0.5
    gaussian = sigma * torch.randn(S, *y.shape, generator=g)
    ensembles = {"model": samples, "oracle": oracle, "gaussian": gaussian}
    crps = {name: crps_ensemble(s, y).mean().item() for name, s in ensembles.items()}
    energy = {name: energy_score(s, y).mean().item() for name, s in ensembles.items()}
    # the Gaussian is 14% (CRPS) and 12% (energy) behind the oracle here; the model must be
    # within 5% of the oracle on both
    assert crps["model"] < 1.05 * crps["oracle"] < crps["gaussian"], crps
    assert energy["model"] < 1.05 * energy["oracle"] < energy["gaussian"], energy
