"""The fused C kernels of ``layers.cpu_kernels`` against torch's own functions.

References are computed in float64 with torch (``F.group_norm``, ``F.silu``, ``softmax``,
``bmm``);
the kernels must match them to float32 accuracy, also far from zero mean, on ranges where the
kernel's polynomial exp clamps, with several OpenMP threads, and must decline (return None)
what they do not handle, so that callers fall back to torch operations. On bfloat16 features
(``--use_amp`` sampling on a CPU) they compute in float32 and round once: the result must be
torch's own rounding of the float64 reference, but for values that lie within float32 error
of a rounding boundary.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from layers import cpu_kernels


def features(rows: int, channels: int, length: int, offset: float = 0.0, scale: float = 3.0):
    torch.manual_seed(0)
    x = offset + scale * torch.randn(rows, channels, 1, length)
    return x.contiguous(memory_format=torch.channels_last)


def reference(x, groups, weight, bias, eps, gamma=None, beta=None, act=False, residual=None):
    """float64 torch: group_norm, FiLM per window (window-major rows), SiLU, residual."""
    h = F.group_norm(x.double().contiguous(), groups, weight.double(), bias.double(), eps)
    if gamma is not None:
        W, C = gamma.shape
        rows = h.view(W, -1, *h.shape[1:])
        h = rows * (1 + gamma.double().view(W, 1, C, 1, 1)) + beta.double().view(W, 1, C, 1, 1)
        h = h.view(x.shape)
    if act:
        h = F.silu(h)
    return h if residual is None else h + residual.double()


@pytest.mark.parametrize(
    "channels,groups,length", [(16, 8, 96), (64, 8, 24), (24, 8, 5), (12, 4, 7)]
)
@pytest.mark.parametrize("offset", [0.0, 10.0])
@pytest.mark.parametrize("film,act,res", [(False, False, False), (True, True, False),
                                          (False, True, True), (True, True, True)])  # fmt: skip
def test_group_norm_act_matches_torch(kernels, channels, groups, length, offset, film, act, res):
    x = features(40, channels, length, offset)
    weight, bias = torch.randn(channels), torch.randn(channels)
    gamma, beta = (0.5 * torch.randn(2, 8, channels)).unbind(0) if film else (None, None)
    residual = features(40, channels, length) if res else None
    out = cpu_kernels.group_norm_act(x, groups, weight, bias, 1e-5, gamma, beta, act, residual)
    ref = reference(x, groups, weight, bias, 1e-5, gamma, beta, act, residual)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5)


def assert_rounded_once(out: torch.Tensor, ref: torch.Tensor, atol: float = 1e-5) -> None:
    """out (bfloat16) is ref (float64) rounded to bfloat16: within half a bfloat16 unit (2^-8
    relative) plus float32 error (atol), and equal to torch's rounding of ref for all values
    but those within float32 error of a rounding boundary (truncating instead of rounding
    would change about half of them)."""
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    err = (out.double() - ref).abs()
    assert (err <= 2.0**-8 * ref.abs() + atol * (1 + ref.abs())).all(), err.max()
    same = (out == ref.float().bfloat16()).double().mean().item()
    assert same > 0.99, same


@pytest.mark.parametrize(
    "channels,groups,length", [(16, 8, 96), (64, 8, 24), (24, 8, 5), (512, 8, 12)]
)
@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("film,act,res", [(False, False, False), (True, True, False),
                                          (True, True, True)])  # fmt: skip
def test_group_norm_act_on_bfloat16_features(kernels, channels, groups, length, offset, film, act,
                                             res):  # fmt: skip
    """bfloat16 in and out, float32 arithmetic: one rounding of the exact result, also 30
    standard deviations from zero mean, where x * scale + shift cancels terms of about 50 and
    float32 arithmetic alone errs by up to ~2.5e-5 (the float32 kernel as much)."""
    x = features(40, channels, length, offset).bfloat16()
    weight, bias = torch.randn(channels), torch.randn(channels)
    gamma, beta = (0.5 * torch.randn(2, 8, channels)).unbind(0) if film else (None, None)
    residual = features(40, channels, length).bfloat16() if res else None
    out = cpu_kernels.group_norm_act(x, groups, weight, bias, 1e-5, gamma, beta, act, residual)
    ref = reference(x, groups, weight, bias, 1e-5, gamma, beta, act, residual)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert_rounded_once(out, ref, atol=5e-5 if offset else 1e-5)


def test_group_norm_act_silu_over_a_wide_range(kernels):
    """Weights of 40 spread the normalised values over about [-190, 160]: the SiLU's exp runs
    through its whole range, clamps included. The kernel must be as accurate as torch's own
    float32 group_norm and SiLU, measured against float64."""
    x = features(64, 16, 96)
    weight, bias = torch.full((16,), 40.0), torch.linspace(-20, 20, 16)
    pre = reference(x, 8, weight, bias, 1e-5)
    assert pre.min() < -100 and pre.max() > 100  # both tails of SiLU are exercised
    ref = reference(x, 8, weight, bias, 1e-5, act=True)
    out = cpu_kernels.group_norm_act(x, 8, weight, bias, 1e-5, act=True).double()
    torch32 = F.silu(F.group_norm(x.contiguous(), 8, weight, bias, 1e-5)).double()
    err, err32 = (out - ref).abs(), (torch32 - ref).abs()
    big = ref.abs() > 1
    assert torch.isfinite(out).all()
    assert err.max() <= 2 * err32.max()
    assert (err / ref.abs())[big].max() <= max(5e-6, 2 * (err32 / ref.abs())[big].max())


def test_group_norm_act_with_several_threads(kernels):
    x = features(301, 32, 48, offset=1.0)  # an odd row count, split over the threads
    weight, bias = torch.randn(32), torch.randn(32)
    gamma, beta = (0.3 * torch.randn(2, 7, 32)).unbind(0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = cpu_kernels.group_norm_act(x, 8, weight, bias, 1e-5, gamma, beta, act=True)
    finally:
        torch.set_num_threads(before)
    ref = reference(x, 8, weight, bias, 1e-5, gamma, beta, act=True)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_group_norm_act_declines_what_it_does_not_handle(kernels):
    x = features(8, 16, 12)
    w, b = torch.ones(16), torch.zeros(16)
    assert cpu_kernels.group_norm_act(x, 8, w, b, 1e-5) is not None
    declined = [
        cpu_kernels.group_norm_act(x.contiguous(), 8, w, b, 1e-5),  # (B, C, 1, L) rows
        cpu_kernels.group_norm_act(x.squeeze(2), 8, w, b, 1e-5),  # 3-D
        cpu_kernels.group_norm_act(x.half(), 8, w, b, 1e-5),
        cpu_kernels.group_norm_act(x.bfloat16(), 8, w, b, 1e-5, residual=x),  # mixed dtypes
        cpu_kernels.group_norm_act(x, 8, w, b, 1e-5, torch.ones(3, 16), torch.ones(3, 16)),
        cpu_kernels.group_norm_act(x, 8, w, b, 1e-5, residual=x.contiguous()),
        cpu_kernels.group_norm_act(x, 5, w, b, 1e-5),  # 16 channels in 5 groups
        cpu_kernels.group_norm_act(x, 8, w, b, 1e-5, torch.ones(2, 8), torch.ones(2, 8)),
        cpu_kernels.group_norm_act(x, 8, w, b, 1e-5, torch.ones(2, 16), None),
        cpu_kernels.group_norm_act(x, 8, w[:8], b[:8], 1e-5),
    ]
    assert all(out is None for out in declined)


@pytest.mark.parametrize("shape,dim", [((2, 4, 7, 1000), 2), ((3, 5, 300), 1), ((6, 1, 40), 1),
                                       ((4, 9), 1), ((700,), 0)])  # fmt: skip
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_softmax_matches_torch(kernels, shape, dim, scale):
    torch.manual_seed(0)
    x = scale * torch.randn(shape)
    ref = x.double().softmax(dim)
    out = cpu_kernels.softmax_(x, dim)
    assert out is x  # in place
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-7)
    assert torch.allclose(out.double().sum(dim), torch.ones(()).double(), atol=1e-5)


def test_softmax_declines_what_it_does_not_handle(kernels):
    x = torch.randn(4, 7, 30)
    assert cpu_kernels.softmax_(x.transpose(0, 2), 1) is None
    assert cpu_kernels.softmax_(x.double(), 1) is None


def attention_reference(h, hn, keys, values, heads, dtype=torch.float64):
    """torch (float64 unless told): h + softmax(keys @ hn)^T @ values, a softmax per head over
    its variates, on window-major U-Net features (R*B, C, 1, L)."""
    B, K, C = keys.shape
    L = h.shape[-1]
    P = h.shape[0] // B * L

    def rows(t):
        return t.permute(0, 2, 3, 1).reshape(B, P, C).to(dtype)

    scores = torch.bmm(keys.to(dtype), rows(hn).transpose(1, 2))  # (B, K, P)
    weights = scores.view(B, heads, K // heads, P).softmax(2).view(B, K, P)
    out = rows(h) + torch.bmm(weights.transpose(1, 2), values.to(dtype))
    return out.view(-1, L, 1, C).permute(0, 3, 2, 1)  # like h


def attention_inputs(samples, windows, channels, length, heads, n_vars, scale=1.0):
    torch.manual_seed(0)
    h, hn = (features(samples * windows, channels, length, offset=1.0) for _ in range(2))
    keys = scale * torch.randn(windows, heads * n_vars, channels) / channels**0.5
    return h, hn, keys, torch.randn(windows, heads * n_vars, channels)


# partial tiles of 16 and 256 positions, key and channel counts that are not multiples of 8
@pytest.mark.parametrize("samples,windows,channels,length,heads,n_vars",
                         [(19, 4, 16, 96, 4, 7), (1, 3, 64, 24, 4, 7), (5, 2, 12, 37, 3, 5),
                          (2, 2, 32, 9, 1, 1), (3, 2, 24, 300, 2, 9),
                          (2, 2, 512, 16, 8, 7)])  # fmt: skip
@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_cross_attention_add_matches_torch(kernels, samples, windows, channels, length, heads,
                                           n_vars, scale):  # fmt: skip
    """Float32 accuracy against float64: within 2e-5 on outputs of a few units, or within three
    times the error of torch's own float32 bmm, softmax and bmm where that is larger (scores of
    a few hundred, scale 300, where float32 rounding of the scores alone moves the weights by
    ~1e-5)."""
    h, hn, keys, values = attention_inputs(samples, windows, channels, length, heads, n_vars,
                                           scale)  # fmt: skip
    out = cpu_kernels.cross_attention_add(h, hn, keys, values, heads)
    ref = attention_reference(h, hn, keys, values, heads)
    assert out.shape == h.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()
    err = (out.double() - ref).abs().max()
    err32 = (attention_reference(h, hn, keys, values, heads, torch.float32) - ref).abs().max()
    assert err <= max(2e-5, 3 * err32), (err, err32)


@pytest.mark.parametrize(
    "samples,windows,channels,length,heads,n_vars",
    [(19, 4, 16, 96, 4, 7), (5, 2, 12, 37, 3, 5), (2, 2, 64, 24, 4, 7), (2, 2, 512, 16, 8, 7)],
)
def test_cross_attention_add_on_bfloat16_features(kernels, samples, windows, channels, length,
                                                  heads, n_vars):  # fmt: skip
    """bfloat16 features, float32 keys and values: the float64 result rounded once."""
    h, hn, keys, values = attention_inputs(samples, windows, channels, length, heads, n_vars)
    h, hn = h.bfloat16(), hn.bfloat16()
    out = cpu_kernels.cross_attention_add(h, hn, keys, values, heads)
    assert out.shape == h.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert_rounded_once(out, attention_reference(h, hn, keys, values, heads))


def test_cross_attention_add_heads_far_apart(kernels):
    """Head 0's scores all 200 below head 1's: a maximum shared by the heads would underflow
    head 0's exponentials to zero (0/0); each head's own maximum keeps its weights, which the
    shift does not change. As accurate as torch's float32 evaluation, against float64."""
    h, hn, keys, values = attention_inputs(2, 2, 16, 20, 2, 3)
    hn[:, 0] = 1.0  # a constant channel, so that a key shifted there shifts every score
    keys[:, :3, 0] -= 200.0
    out = cpu_kernels.cross_attention_add(h, hn, keys, values, 2).double()
    ref = attention_reference(h, hn, keys, values, 2)
    err32 = (attention_reference(h, hn, keys, values, 2, torch.float32) - ref).abs().max()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() <= max(1e-5, 2 * err32)


def test_cross_attention_add_with_several_threads(kernels):
    h, hn, keys, values = attention_inputs(7, 5, 32, 48, 4, 7)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = cpu_kernels.cross_attention_add(h, hn, keys, values, 4)
    finally:
        torch.set_num_threads(before)
    ref = attention_reference(h, hn, keys, values, 4)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_cross_attention_add_declines_what_it_does_not_handle(kernels):
    h, hn, keys, values = attention_inputs(2, 3, 16, 12, 2, 3)
    assert cpu_kernels.cross_attention_add(h, hn, keys, values, 2) is not None
    keys4 = torch.randn(4, 6, 16)
    declined = [
        cpu_kernels.cross_attention_add(h.contiguous(), hn, keys, values, 2),  # (B, C, 1, L)
        cpu_kernels.cross_attention_add(h, hn.contiguous(), keys, values, 2),
        cpu_kernels.cross_attention_add(h.squeeze(2), hn.squeeze(2), keys, values, 2),  # 3-D
        cpu_kernels.cross_attention_add(h, hn, keys.double(), values.double(), 2),
        cpu_kernels.cross_attention_add(h.bfloat16(), hn, keys, values, 2),  # mixed dtypes
        cpu_kernels.cross_attention_add(h.half(), hn.half(), keys, values, 2),
        cpu_kernels.cross_attention_add(h, hn, keys, values, 4),  # 6 keys in 4 heads
        cpu_kernels.cross_attention_add(h, hn, keys4, keys4, 2),  # 6 rows, 4 windows
        cpu_kernels.cross_attention_add(h, hn, keys.transpose(1, 2), values, 2),
    ]
    assert all(out is None for out in declined)


def test_disabled_or_no_compiler_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSION_KERNEL_CACHE", str(tmp_path))
    try:
        monkeypatch.setenv("DIFFUSION_CPU_KERNELS", "0")
        cpu_kernels.load.cache_clear()
        assert cpu_kernels.load() is None
        assert (
            cpu_kernels.group_norm_act(features(2, 8, 4), 4, torch.ones(8), torch.zeros(8), 1e-5)
            is None
        )
        monkeypatch.delenv("DIFFUSION_CPU_KERNELS")
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
        cpu_kernels.load.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cpu_kernels.load() is None
        assert any("fused CPU kernels unavailable" in str(w.message) for w in caught)
        assert not list(tmp_path.glob("*.so"))
    finally:
        cpu_kernels.load.cache_clear()  # later tests load the kernels again


def test_compiled_library_is_cached(kernels, monkeypatch, tmp_path):
    """The library is built once per cache folder and reused by a later process."""
    monkeypatch.setenv("DIFFUSION_KERNEL_CACHE", str(tmp_path))
    try:
        cpu_kernels.load.cache_clear()
        assert cpu_kernels.load() is not None
        (built,) = tmp_path.glob("kernels-*.so")
        stamp = built.stat().st_mtime_ns
        cpu_kernels.load.cache_clear()
        assert cpu_kernels.load() is not None
        assert built.stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1
    finally:
        cpu_kernels.load.cache_clear()


def test_bfloat16_rounding_without_the_cpu_instruction(kernels, monkeypatch, tmp_path):
    """Where the compiler does not target avx512_bf16, the kernels round with integer
    arithmetic instead of vcvtneps2bf16: the same round-to-nearest-even, so the same bits."""
    x = features(40, 24, 37, offset=1.0).bfloat16()
    residual = features(40, 24, 37).bfloat16()
    weight, bias = torch.randn(24), torch.randn(24)
    gamma, beta = (0.5 * torch.randn(2, 8, 24)).unbind(0)
    h, hn, keys, values = attention_inputs(5, 2, 12, 37, 3, 5)
    h, hn = h.bfloat16(), hn.bfloat16()

    def run():
        return (
            cpu_kernels.group_norm_act(x, 8, weight, bias, 1e-5, gamma, beta, True, residual),
            cpu_kernels.cross_attention_add(h, hn, keys, values, 3),
        )

    default = run()
    monkeypatch.setenv("DIFFUSION_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "FLAGS", [*cpu_kernels.FLAGS, "-mno-avx512bf16"])
    try:
        cpu_kernels.load.cache_clear()
        assert cpu_kernels.load() is not None
        portable = run()
    finally:
        cpu_kernels.load.cache_clear()
    for a, b in zip(default, portable):
        assert torch.equal(a, b)
