"""``--marginal empirical``: the residual is diffused in Gaussian-copula coordinates.

Each (variate, step) of the normalised target is mapped to N(0, 1) through its training
quantiles, u = Φ⁻¹(F̂(x)), with F̂ linear between the table's quantiles, and samples are mapped
back through F̂⁻¹(Φ(u)). References: ``numpy.interp`` for the piecewise-linear F̂ and its
inverse, ``scipy.stats.norm`` for Φ and Φ⁻¹.
"""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import pytest
import torch
from scipy.stats import kurtosis, norm

from models import iTransformerDiffusion as M
from utils.args import build_parser, check_args

W, N, H = 4000, 3, 5


def _laplace(n: int, seed: int) -> torch.Tensor:
    """Heavy-tailed targets (kurtosis 6) with a different location and scale per (n, h)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, N, H, generator=g, dtype=torch.float64) - 0.5
    loc = torch.linspace(-0.5, 0.5, N * H, dtype=torch.float64).view(N, H)
    scale = torch.linspace(0.3, 1.5, N * H, dtype=torch.float64).view(N, H)
    return (loc - scale * torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def _model(marginal: str = "empirical") -> M.Model:
    parser = build_parser()
    args = parser.parse_args(
        f"--task_name diffusion_forecast --model iTransformerDiffusion --seq_len 8 "
        f"--label_len 4 --pred_len {H} --d_model 16 --d_ff 16 --n_heads 2 --e_layers 1 "
        f"--cond_dim 16 --unet_channels 8,16 --diffusion_steps 50 --marginal {marginal}".split()
    )
    check_args(parser, args)
    args.enc_in = args.dec_in = args.c_out = N
    return M.Model(args)


@pytest.fixture(scope="module")
def fitted():
    model = _model()
    model.fit_marginal(_laplace(W, 0))
    return model


def test_the_table_is_numpys_quantiles_of_the_training_targets(fitted):
    x = _laplace(W, 0).double().numpy()
    levels = np.linspace(0, 1, M.MARGINAL_LEVELS)
    expected = np.quantile(x, levels, axis=0)  # (K, N, H), linear interpolation
    np.testing.assert_allclose(fitted.marginal_table.numpy(), expected, atol=3e-3)
    assert bool((fitted.marginal_table.diff(dim=0) > 0).all()), "not strictly ascending"


def test_to_gaussian_is_phi_inverse_of_the_tables_linear_cdf(fitted):
    table = fitted.marginal_table.double().numpy()
    levels = np.linspace(0, 1, M.MARGINAL_LEVELS)
    x = _laplace(300, 1)  # new draws: some beyond the table's ends
    u = M.to_gaussian(x, fitted.marginal_table).double().numpy()
    for n in range(N):
        for h in range(H):
            level = np.interp(x[:, n, h].double().numpy(), table[:, n, h], levels)
            ref = norm.ppf(np.clip(level, M.MARGINAL_EPS, 1 - M.MARGINAL_EPS))
            np.testing.assert_allclose(u[:, n, h], ref, atol=2e-4)


def test_from_gaussian_is_the_tables_quantile_function_at_phi(fitted):
    table = fitted.marginal_table.double().numpy()
    levels = np.linspace(0, 1, M.MARGINAL_LEVELS)
    u = torch.randn(2, 40, N, H, generator=torch.Generator().manual_seed(2)) * 1.5
    x = M.from_gaussian(u, fitted.marginal_table).double().numpy()
    for n in range(N):
        for h in range(H):
            ref = np.interp(norm.cdf(u[..., n, h].double().numpy()), levels, table[:, n, h])
            np.testing.assert_allclose(x[..., n, h], ref, atol=1e-5)


def test_gaussianised_training_targets_are_standard_normal_per_variate_and_step(fitted):
    x = _laplace(W, 0)
    u = M.to_gaussian(x, fitted.marginal_table).double().numpy()
    assert kurtosis(x.double().numpy().reshape(W, -1), axis=0, fisher=False).min() > 4.5
    np.testing.assert_allclose(u.mean(0), 0.0, atol=0.02)
    np.testing.assert_allclose(u.std(0), 1.0, atol=0.03)
    np.testing.assert_allclose(kurtosis(u.reshape(W, -1), axis=0, fisher=False), 3.0, atol=0.2)


def test_samples_map_back_to_the_residuals_they_came_from(fitted):
    """from_diffusion ∘ diffusion_target is the identity on forecasts (inside the table's range):
    what the network is trained on and what sampling returns are in the same coordinates."""
    g = torch.Generator().manual_seed(3)
    B = 6
    x_enc = 1.0 + torch.randn(B, 8, N, generator=g)
    y_det, _, norm_ = fitted.backbone_forward(x_enc, None)
    sigma = M.diffusion_normalizer(norm_).stdev
    y = y_det + sigma * _laplace(B, 4).clamp(-2, 2).permute(0, 2, 1)
    u = fitted.diffusion_target(y, y_det, norm_)  # (B, N, H)
    assert not torch.allclose(u, fitted.normalised_target(y, y_det, norm_), atol=1e-2)
    back = fitted.from_diffusion(u[None], y_det, norm_)[0]  # (B, H, N)
    torch.testing.assert_close(back, y, atol=1e-4, rtol=1e-4)


def test_an_unfitted_table_is_an_error_not_silent_zeros():
    model = _model()
    x = torch.randn(2, 8, N)
    with pytest.raises(RuntimeError, match="marginal table is not fitted"):
        model.predict(x, None, n_samples=2, steps=2)
    assert _model("none").predict(x, None, n_samples=2, steps=2)[2].shape == (2, 2, H, N)


def test_models_from_older_arguments_diffuse_the_target_as_is():
    args = vars(build_parser().parse_args(["--task_name", "diffusion_forecast"]))
    args.pop("marginal")
    args.update(pred_len=H, enc_in=N, dec_in=N, c_out=N, d_model=16, d_ff=16, n_heads=2,
                cond_dim=16, unet_channels="8,16", model="iTransformerDiffusion")  # fmt: skip
    model = M.Model(Namespace(**args))
    assert model.marginal == "none" and "marginal_table" not in model.state_dict()
