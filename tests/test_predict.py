"""The sampling hot path (``Model.predict``) against a naive looped sampler.

``scripts/benchmark_sampling.py`` times ``predict`` against ``looped_sampler``: a Python loop
over samples that recomputes the backbone and the condition at every step and feeds the
denoiser one sample of the batch at a time. These tests check that the two compute the same
samples from the same initial noise, for every way ``predict`` can chunk the trajectories, so
the benchmark's speed-up compares like with like.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from models import iTransformerDiffusion
from models.iTransformerDiffusion import chunk_sizes
from models.iTransformerDiffusionDirect import Model as DirectModel
from utils.args import build_parser, check_args
from utils.tools import CompiledOrEager

L, H, N, B, S, STEPS = 32, 48, 3, 4, 32, 5
REPO_ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "benchmark_sampling", REPO_ROOT / "scripts" / "benchmark_sampling.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


looped_sampler = _benchmark_module().looped_sampler


def _model(name: str = "iTransformerDiffusion", pred_len: int = H, marginal: str = "none"):
    parser = build_parser()
    argv = (
        f"--task_name diffusion_forecast --model {name} --seq_len {L} --label_len 16 "
        f"--pred_len {pred_len} --d_model 16 --d_ff 16 --n_heads 2 --e_layers 1 --cond_dim 16 "
        f"--unet_channels 16,32 --diffusion_steps 100 --marginal {marginal}"
    )
    args = parser.parse_args(argv.split())
    check_args(parser, args)
    args.enc_in = args.dec_in = args.c_out = N
    torch.manual_seed(0)
    model = (DirectModel if name.endswith("Direct") else iTransformerDiffusion.Model)(args)
    with torch.no_grad():  # FiLM and the attention start at the identity: make them matter
        for p in model.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if model.marginal == "empirical":  # a heavy-tailed table, as training would fit
        model.fit_marginal(torch.distributions.Laplace(0.0, 0.7).sample((500, N, pred_len)))
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = 2.0 + torch.randn(B, L, N, generator=g)
    x_mark = torch.rand(B, L, 4, generator=g) - 0.5
    return x, x_mark


@pytest.mark.parametrize(
    "name, marginal",
    [("iTransformerDiffusion", "none"), ("iTransformerDiffusion", "empirical"),
     ("iTransformerDiffusionDirect", "none")],
)  # fmt: skip
@pytest.mark.parametrize("per_chunk", [5, S])
def test_predict_equals_the_looped_sampler(name, marginal, per_chunk):
    """The same seed → the same samples as the looped sampler, however predict chunks the
    S·B trajectories (uneven chunks, one chunk of all): both draw sample s's initial noise as
    the generator's s-th (B, N, H) draw."""
    model = _model(name, marginal=marginal)
    x, x_mark = _inputs()
    mean, std, samples = model.predict(
        x, x_mark, n_samples=S, sampler="ddim", steps=STEPS,
        spacing="trailing", generator=torch.Generator().manual_seed(0), sample_chunk=per_chunk * B,
    )  # fmt: skip
    reference = looped_sampler(
        model, x, x_mark, S, STEPS, torch.Generator().manual_seed(0), spacing="trailing"
    )
    assert samples.shape == (S, B, H, N) and samples.dtype == torch.float32
    scale = reference.abs().max().item()
    assert (samples - reference).abs().max().item() < 1e-4 * scale
    assert torch.allclose(mean, reference.mean(0), atol=1e-4 * scale)
    assert torch.allclose(std, reference.std(0, unbiased=False), atol=1e-4 * scale)
    assert std.min() > 0  # the samples differ: the noise was not shared across samples


def test_a_samples_noise_does_not_depend_on_the_chunks():
    """Sample s starts from the generator's s-th (B, N, H) draw however the samples are
    chunked. With 3 windows x 3 variates x 21 steps, 189 values per sample, one draw of
    several samples would not equal the samples' separate draws (torch draws normals in
    blocks of 16), so chunking the draws would change the samples."""
    model = _model(pred_len=21)
    x, x_mark = _inputs()
    x, x_mark = x[:3], x_mark[:3]

    def run(per_chunk):
        g = torch.Generator().manual_seed(0)
        return model.predict(x, x_mark, 7, steps=4, spacing="trailing", generator=g,
                             sample_chunk=per_chunk * 3)[2]  # fmt: skip

    g = torch.Generator().manual_seed(0)
    reference = looped_sampler(model, x, x_mark, 7, 4, g, spacing="trailing")
    scale = reference.abs().max().item()
    for per_chunk in (1, 3, 7):
        assert (run(per_chunk) - reference).abs().max().item() < 1e-4 * scale
    g = torch.Generator().manual_seed(0)
    joint = torch.randn((2 * 189,), generator=g)
    g = torch.Generator().manual_seed(0)
    apart = torch.cat([torch.randn((189,), generator=g) for _ in range(2)])
    assert not torch.allclose(joint, apart)  # the premise: chunked draws would differ


def test_chunk_sizes():
    for n_samples in (1, 2, 7, 32, 100):
        for per_chunk in (1, 3, 9, 100, 1000):
            one = chunk_sizes(n_samples, per_chunk)
            assert sum(one) == n_samples and max(one) == min(per_chunk, n_samples)
            assert all(n == max(one) for n in one[:-1])  # full chunks, then the rest


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.5)])
def test_samplers_that_draw_noise_at_every_step_give_the_same_samples_however_chunked(sampler, eta):
    """Each sample's per-step noise comes from its own generator, seeded in sample order, so
    the samples depend on the seed only, not on how the trajectories are chunked."""
    model = _model()
    x, x_mark = _inputs()

    def run(per_chunk, seed=0):
        g = torch.Generator().manual_seed(seed)
        return model.predict(x, x_mark, S, sampler, 10, eta=eta, generator=g,
                             sample_chunk=per_chunk * B)[2]  # fmt: skip

    reference = run(S)
    scale = reference.abs().max().item()
    for per_chunk in (1, 5):
        assert (run(per_chunk) - reference).abs().max().item() < 1e-5 * scale
    other = run(S, seed=1)
    assert (other - reference).abs().mean() > 0.1 * reference.std(0).mean()


def test_per_sample_noise_streams():
    """Rows of sample i come from a generator seeded with seeds[i], and go on from there."""
    noise = iTransformerDiffusion.per_sample_noise([7, 8], torch.device("cpu"))
    x = torch.empty(3 * 2, 4)  # 3 windows x 2 samples, window-major
    first, second = noise(x), noise(x)
    g7, g8 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
    expected = [
        torch.stack([torch.randn(3, 4, generator=g7), torch.randn(3, 4, generator=g8)], dim=1)
        for _ in range(2)
    ]  # (3 windows, 2 samples, 4)
    assert torch.equal(first.view(3, 2, 4), expected[0])
    assert torch.equal(second.view(3, 2, 4), expected[1])
    assert not torch.equal(first[0::2], first[1::2]) and not torch.equal(first, second)


def test_backbone_and_condition_run_once_per_call(monkeypatch):
    """The backbone and everything derived from z run once per predict call, not per chunk,
    step or sample; the denoiser runs once per chunk and step."""
    model = _model()
    calls = {"backbone": 0, "condition": 0, "denoiser": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(model, "backbone_forward", counted("backbone", model.backbone_forward))
    encode = counted("condition", model.denoiser.encode_condition)
    monkeypatch.setattr(model.denoiser, "encode_condition", encode)

    def count_denoiser_call(*_):
        calls["denoiser"] += 1

    hook = model.denoiser.register_forward_hook(count_denoiser_call)
    x, x_mark = _inputs()
    model.predict(x, x_mark, n_samples=S, sampler="ddim", steps=STEPS, sample_chunk=10 * B)
    hook.remove()
    chunks = len(chunk_sizes(S, 10))
    assert calls == {"backbone": 1, "condition": 1, "denoiser": chunks * STEPS}


def test_centred_samples_have_the_point_forecast_as_mean():
    model = _model()
    x, x_mark = _inputs()
    mean, _, samples = model.predict(x, x_mark, n_samples=S, steps=STEPS, center=True)
    y_det = model.backbone_forward(x, x_mark)[0]
    assert torch.allclose(mean, y_det, atol=1e-5)
    assert torch.allclose(samples.mean(0), y_det, atol=1e-5)


def test_bf16_autocast_samples_stay_close_to_float32():
    """--use_amp sampling: float32 samples, within bf16's precision of the float32 ones."""
    model = _model()
    x, x_mark = _inputs()

    def run(dtype):
        g = torch.Generator().manual_seed(0)
        return model.predict(x, x_mark, S, steps=STEPS, generator=g, autocast_dtype=dtype)[2]

    fp32, bf16 = run(None), run(torch.bfloat16)
    assert bf16.dtype == torch.float32
    spread = fp32.std(0).mean().item()
    error = (bf16 - fp32).abs().mean().item()
    assert 0 < error < 0.05 * spread  # autocast was on, and it moved samples by ≪ their spread


def test_compiled_or_eager_falls_back_when_compiled_code_fails(monkeypatch, caplog):
    """A backend that cannot build (no C++ compiler, an unsupported GPU) costs a warning, not
    the run: the eager module answers, and later calls go straight to it."""
    module = torch.nn.Linear(3, 2)
    failures = []

    def broken(*args, **kwargs):
        failures.append(1)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", lambda m, **kw: broken)
    wrapped = CompiledOrEager(module)
    x = torch.randn(4, 3)
    with caplog.at_level(logging.WARNING):
        out = wrapped(x)
        out2 = wrapped(x)
    assert torch.equal(out, module(x)) and torch.equal(out2, module(x))
    assert len(failures) == 1  # not retried on every call
    assert "torch.compile failed" in caplog.text
