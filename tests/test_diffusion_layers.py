"""UNet1D and its layers: shapes, conditioning, the window-major layout, reference formulas."""

import pytest
import torch
import torch.nn.functional as F

from layers.Diffusion_layers import (
    FiLMLayer,
    SinusoidalPosEmb,
    UNet1D,
    VariateCrossAttention,
    norm_film_act,
    to_features,
)

SMALL = (8, 16, 32, 64)
D_MODEL = 16


def make_unet(n_vars: int = 7, **kwargs) -> UNet1D:
    torch.manual_seed(0)
    kwargs.setdefault("channels", SMALL)
    kwargs.setdefault("cond_dim", 32)
    return UNet1D(n_vars, D_MODEL, **kwargs).eval()


@torch.no_grad()
def perturb_(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Make zero-initialised layers (FiLM) non-zero so every path affects the output."""
    g = torch.Generator().manual_seed(123)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))


def inputs(b: int = 2, n: int = 7, h: int = 48, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, h, generator=g)
    z = torch.randn(b, n, D_MODEL, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    return x, t, z


def run(model: UNet1D, x, t, z, extra=None):
    return model(x, t, model.encode_condition(z, extra))


@pytest.mark.parametrize("h", [1, 7, 36, 96, 720])
def test_output_shape_any_horizon(h):
    model = make_unet()
    x, t, z = inputs(h=h)
    out = run(model, x, t, z)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("n", [1, 21])
def test_output_shape_n_vars(n):
    model = make_unet(n)
    x, t, z = inputs(n=n, h=36)
    assert run(model, x, t, z).shape == (2, n, 36)


def test_extra_channels_are_required_when_built_with_them():
    model = make_unet(extra_in_channels=3)
    x, t, z = inputs()
    assert run(model, x, t, z, torch.randn(2, 3, 48)).shape == x.shape
    with pytest.raises(ValueError, match="extra channels"):
        model.encode_condition(z)
    with pytest.raises(ValueError, match="extra channels"):
        make_unet().encode_condition(z, torch.randn(2, 3, 48))


def test_extra_channels_act_as_concatenated_input_channels():
    """The cached response to the extra channels is init_conv over [x, extra] minus x's part."""
    model = make_unet(extra_in_channels=3)
    perturb_(model)
    _, _, z = inputs(h=40)
    extra = torch.randn(2, 3, 40)
    cond = model.encode_condition(z, extra)
    reference = F.conv1d(
        torch.cat([torch.zeros(2, 7, 40), extra], dim=1),
        model.init_conv.weight,
        model.init_conv.bias,
        padding=3,
    )
    assert torch.allclose(cond.first.squeeze(2), reference, atol=1e-6)


def test_sinusoidal_embedding():
    emb = SinusoidalPosEmb(16)(torch.tensor([0, 3, 999]))
    assert emb.shape == (3, 16)
    assert torch.allclose(emb[0, :8], torch.zeros(8)) and torch.allclose(emb[0, 8:], torch.ones(8))
    assert not torch.allclose(emb[1], emb[2])


@pytest.mark.parametrize("t_kind", ["scalar", "per window"])
def test_a_condition_serves_its_windows_samples_like_repeated_copies(t_kind):
    """One condition of B windows serves R·B window-major rows (rows b·R .. b·R + R − 1 are
    window b's samples) exactly as a condition built from R copies of each window would."""
    model = make_unet(extra_in_channels=2)
    perturb_(model)
    R, B = 3, 2
    _, _, z = inputs(b=B)
    extra = torch.randn(B, 2, 48)
    x = torch.randn(B * R, 7, 48)
    t = torch.tensor(17) if t_kind == "scalar" else torch.tensor([17, 400])
    shared = model(x, t, model.encode_condition(z, extra))
    t_rows = t if t_kind == "scalar" else t.repeat_interleave(R)
    copies = model.encode_condition(z.repeat_interleave(R, 0), extra.repeat_interleave(R, 0))
    assert torch.allclose(shared, model(x, t_rows, copies), atol=1e-5)
    # the layout matters: sample-major copies give another result
    wrong = model.encode_condition(z.repeat(R, 1, 1), extra.repeat(R, 1, 1))
    assert not torch.allclose(shared, model(x, t_rows if t.dim() == 0 else t.repeat(R), wrong))


def test_film_is_the_identity_at_init():
    film = FiLMLayer(cond_dim=32, channels=8)
    gamma, beta = film(torch.randn(2, 32))
    assert torch.equal(gamma, torch.zeros(2, 8)) and torch.equal(beta, torch.zeros(2, 8))


@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_norm_film_act_equals_group_norm_then_film_then_silu(offset):
    """On features of 2 windows x 3 samples: torch's GroupNorm, then each window's γ, β on its
    own three rows, then SiLU."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    h = offset + torch.randn(2 * 3, 16, 20)
    gamma, beta = torch.randn(2, 16), torch.randn(2, 16)
    got = norm_film_act(to_features(h), norm, (gamma, beta)).squeeze(2)
    expected = norm(h) * (1 + gamma.repeat_interleave(3, 0)[..., None])
    expected = F.silu(expected + beta.repeat_interleave(3, 0)[..., None])
    assert torch.allclose(got, expected, atol=1e-4 * (1 + offset))
    plain = norm_film_act(to_features(h), norm, act=False).squeeze(2)
    assert torch.allclose(plain, norm(h), atol=1e-4 * (1 + offset))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet1D(7, D_MODEL, cond_dim=32, channels=SMALL, extra_in_channels=2).train()
    x, t, z = inputs(h=36)
    out = run(model, x, t, z, torch.randn(2, 2, 36))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_output_depends_on_z_t_and_x():
    model = make_unet()
    perturb_(model)
    x, t, z = inputs()
    out = run(model, x, t, z)
    assert not torch.allclose(run(model, x, t, z + torch.randn_like(z)), out, atol=1e-4)
    assert not torch.allclose(run(model, x, t + 100, z), out, atol=1e-4)
    assert not torch.allclose(run(model, x + torch.randn_like(x), t, z), out, atol=1e-4)


def test_unet_invariant_to_permuting_condition_variates():
    model = make_unet()
    perturb_(model)
    x, t, z = inputs()
    perm = torch.randperm(7)
    assert torch.allclose(run(model, x, t, z), run(model, x, t, z[:, perm]), atol=1e-5)


def textbook_attention(attn: VariateCrossAttention, h, z):
    """softmax(q kᵀ/√d) v per head, written out from the layer's weights (reference)."""
    hs, hd = attn.n_heads, attn.head_dim
    q = attn.to_q(attn.norm(h).transpose(1, 2))  # (B, L, C)
    k, v = attn.to_kv(z).chunk(2, dim=-1)  # (B, N, C) each
    heads = []
    for i in range(hs):
        part = slice(i * hd, (i + 1) * hd)
        w = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / hd**0.5, dim=-1)
        heads.append(w @ v[..., part])  # (B, L, hd)
    return h + attn.to_out(torch.cat(heads, dim=-1)).transpose(1, 2)


@pytest.mark.parametrize("n_vars,length", [(5, 10), (40, 12)])
def test_cross_attention_matches_textbook_formula(n_vars, length):
    """Several samples per window folded into one query sequence equal the textbook formula
    applied to each sample with its own copy of the window's keys and values."""
    torch.manual_seed(0)
    attn = VariateCrossAttention(channels=16, d_model=D_MODEL, n_heads=2)
    with torch.no_grad():
        attn.to_out.bias.normal_()
    z = torch.randn(2, n_vars, D_MODEL)
    h = torch.randn(2 * 3, 16, length)  # (B·R, C, L), window-major
    ref = textbook_attention(attn, h, z.repeat_interleave(3, 0))

    def attend(h, z):
        return attn(to_features(h), attn.kv(z)).squeeze(2)

    assert torch.allclose(attend(h, z), ref, atol=1e-5)
    assert torch.allclose(attend(h[::3], z), ref[::3], atol=1e-5)  # one sample (R = 1)
    perm = torch.randperm(n_vars)  # a set of variates: their order does not matter
    assert torch.allclose(attend(h, z[:, perm]), ref, atol=1e-5)


def test_padding_is_cropped_and_replicates_the_last_step():
    model = make_unet()
    perturb_(model)
    x, t, z = inputs(h=36)  # padded internally to 40
    out = run(model, x, t, z)
    assert out.shape == (2, 7, 36) and torch.isfinite(out).all()
    x40 = torch.cat([x, x[..., -1:].expand(-1, -1, 4)], dim=-1)
    assert torch.allclose(run(model, x40, t, z)[..., :36], out, atol=1e-5)


def test_default_widths_parameter_count_about_8m():
    torch.manual_seed(0)
    model = UNet1D(n_vars=7, d_model=128)  # channels (64, 128, 256, 512), cond_dim 256
    n_params = sum(p.numel() for p in model.parameters())
    assert 6e6 < n_params < 12e6
