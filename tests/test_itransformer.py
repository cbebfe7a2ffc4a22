"""models/iTransformer.py: shapes, the backbone split, and instance normalisation's invariances."""

from __future__ import annotations

from argparse import Namespace

import pytest
import torch

from models.iTransformer import Model, Normalizer

L, H, D_MODEL = 32, 12, 16


def _configs(**overrides) -> Namespace:
    cfg = {
        "seq_len": L,
        "pred_len": H,
        "d_model": D_MODEL,
        "d_ff": 16,
        "e_layers": 1,
        "n_heads": 2,
        "factor": 1,
        "dropout": 0.1,
        "activation": "gelu",
        "embed": "timeF",
        "freq": "h",
    }
    cfg.update(overrides)
    return Namespace(**cfg)


def _model(seed=0, **overrides) -> Model:
    torch.manual_seed(seed)
    return Model(_configs(**overrides))


def _inputs(B=4, N=7, M=4, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = 3.0 + 2.0 * torch.randn(B, L, N, generator=g, dtype=dtype)
    x_mark = torch.rand(B, L, M, generator=g, dtype=dtype) - 0.5
    return x, x_mark


@pytest.mark.parametrize("N", [1, 7])
@pytest.mark.parametrize("with_marks", [True, False])
def test_output_shape(N, with_marks):
    model = _model().eval()
    x, x_mark = _inputs(B=3, N=N)
    out = model(x, x_mark if with_marks else None)
    assert out.shape == (3, H, N)
    assert torch.isfinite(out).all()
    # the (ignored) decoder inputs of the TSLib signature do not change the answer
    dec = torch.randn(3, 6 + H, N)
    torch.testing.assert_close(model(x, x_mark if with_marks else None, dec, None), out)


def test_time_marks_change_the_forecast():
    model = _model().eval()
    x, x_mark = _inputs()
    assert not torch.allclose(model(x, x_mark), model(x, None))


@pytest.mark.parametrize("N", [1, 7])
def test_backbone_forward_tokens_and_forecast(N):
    model = _model().eval()
    x, x_mark = _inputs(B=2, N=N)
    with torch.no_grad():
        y_det, z, norm = model.backbone_forward(x, x_mark)
        assert z.shape == (2, N, D_MODEL)  # time tokens dropped
        assert y_det.shape == (2, H, N)
        torch.testing.assert_close(y_det, model(x, x_mark), rtol=0, atol=0)
        # z is the encoder output of the *variate* tokens: the first N of the N + M tokens
        tokens = model.enc_embedding(norm.normalize(x), x_mark)
        assert tokens.shape == (2, N + 4, D_MODEL)
        full, _ = model.encoder(tokens)
        torch.testing.assert_close(z, full[:, :N])
        # the head is applied to z alone and denormalised with the window's statistics
        torch.testing.assert_close(
            y_det, model.projection(z).transpose(1, 2) * norm.stdev + norm.means
        )
    torch.testing.assert_close(norm.means, x.mean(1, keepdim=True))
    expected_std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(norm.stdev, expected_std)


def test_normalizer_round_trip():
    x, _ = _inputs(seed=5)
    norm = Normalizer(x)
    z = norm.normalize(x)
    torch.testing.assert_close(z.mean(1), torch.zeros(4, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.denormalize(z), x)


@pytest.mark.parametrize("c", [-7.5, 100.0])
def test_adding_a_constant_shifts_the_forecast_by_it(c):
    model = _model().double().eval()
    x, x_mark = _inputs(dtype=torch.float64)
    with torch.no_grad():
        base = model(x, x_mark)
        shifted = model(x + c, x_mark)
    torch.testing.assert_close(shifted, base + c, rtol=0, atol=1e-9)
    # float32 too, within float32 rounding of the shifted inputs
    model32 = _model().eval()
    x32, m32 = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model32(x32 + c, m32), model32(x32, m32) + c, rtol=0, atol=1e-3)


@pytest.mark.parametrize("k", [0.5, 3.0, 40.0])
def test_scaling_the_inputs_scales_the_forecast(k):
    model = _model().double().eval()
    x, x_mark = _inputs(dtype=torch.float64)
    with torch.no_grad():
        base = model(x, x_mark)
        scaled = model(k * x, x_mark)
    # exact but for the 1e-5 added to the variance: sqrt(k^2 v + 1e-5) != k sqrt(v + 1e-5)
    err = (scaled - k * base).abs().max()
    assert err <= 1e-4 * (k * base).abs().max()
    assert not torch.allclose(scaled, base, rtol=1e-2)


def test_constant_series_is_finite_and_forecasts_near_the_constant():
    model = _model().eval()
    x = torch.full((2, L, 3), 5.0)
    with torch.no_grad():
        out = model(x, None)
    assert torch.isfinite(out).all()
    # normalised input is 0, so the forecast is 5 + sqrt(1e-5) * head(tokens of zeros)
    assert (out - 5.0).abs().max() < 1e-1


def test_gradients_reach_every_parameter():
    model = _model().train()
    x, x_mark = _inputs(B=4, N=7)
    target = torch.randn(4, H, 7, generator=torch.Generator().manual_seed(3))
    loss = torch.nn.functional.mse_loss(model(x, x_mark), target)
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    assert any("projection" in n for n in names) and any("encoder" in n for n in names)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_eval_is_deterministic_and_train_uses_dropout():
    model = _model(dropout=0.5)
    x, x_mark = _inputs()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, x_mark), model(x, x_mark), rtol=0, atol=0)
        model.train()
        torch.manual_seed(0)
        a = model(x, x_mark)
        torch.manual_seed(1)
        b = model(x, x_mark)
    assert not torch.allclose(a, b)


def test_diffusion_target_floors_sigma_and_round_trips():
    """A flat lookback (instance σ ≈ 0) does not blow the diffused residual up: σ is floored
    at STD_FLOOR for the diffusion; from_diffusion inverts diffusion_target exactly; and
    window_weight can drop a window from the loss."""
    from models.iTransformerDiffusion import STD_FLOOR
    from models.iTransformerDiffusion import Model as DiffusionModel

    torch.manual_seed(0)
    cfg = _configs(enc_in=3, diffusion_steps=50, beta_schedule="cosine", parameterization="v",
                   cond_dim=16, unet_channels="8,16", cond_forecast=1, loss_lambda=0.5)  # fmt: skip
    model = DiffusionModel(cfg).eval()
    x, x_mark = _inputs(B=2, N=3)
    x[1, :, 0] = 5.0  # window 1, variate 0: flat lookback
    y = torch.randn(2, H, 3)
    with torch.no_grad():
        y_det, z, norm = model.backbone_forward(x, x_mark)
        assert norm.stdev[1, 0, 0] < 0.01  # the backbone's own σ is not floored
        x0 = model.diffusion_target(y, y_det, norm)  # (B, N, H)
        flat = (y[1, :, 0] - y_det[1, :, 0]) / STD_FLOOR
        assert torch.allclose(x0[1, 0], flat, atol=1e-5)
        back = model.from_diffusion(x0[None], y_det, norm)[0]  # (B, H, N)
        assert torch.allclose(back, y, atol=1e-5)

        def loss(weight=None):
            g = torch.Generator().manual_seed(3)  # the same steps and noise every call
            return model.diffusion_loss(y, y_det, z, norm, g, window_weight=weight).item()

        assert loss() < 1e3
        assert loss(torch.tensor([1.0, 0.0]).view(2, 1, 1)) != loss()
