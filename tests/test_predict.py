"""The sampling hot path (``Model.predict``) against the original design's loop.

``scripts/benchmark_sampling.py`` times ``predict`` against ``looped_original``: a Python loop
over samples that recomputes the backbone and the condition at every step and feeds the
denoiser one sample of the batch at a time. These tests check that the two compute the same
samples from the same initial noise, for every way ``predict`` can chunk the trajectories, so
the benchmark's speed-up compares like with like. The sizes put the U-Net's feature maps above
``GroupNorm.fast_min_numel``, so a fused inference path (the C kernels where they are built)
is the one being checked.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import pytest
import torch

from models import iTransformerDiffusion
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


looped_original = _benchmark_module().looped_original


def _model(name: str = "iTransformerDiffusion"):
    parser = build_parser()
    argv = (
        f"--task_name diffusion_forecast --model {name} --seq_len {L} --label_len 16 "
        f"--pred_len {H} --d_model 16 --d_ff 16 --n_heads 2 --e_layers 1 --cond_dim 16 "
        "--unet_channels 16,32 --diffusion_steps 100"
    )
    args = parser.parse_args(argv.split())
    check_args(parser, args)
    args.enc_in = args.dec_in = args.c_out = N
    torch.manual_seed(0)
    model = (DirectModel if name.endswith("Direct") else iTransformerDiffusion.Model)(args)
    with torch.no_grad():  # FiLM and the attention start at the identity: make them matter
        for p in model.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = 2.0 + torch.randn(B, L, N, generator=g)
    x_mark = torch.rand(B, L, 4, generator=g) - 0.5
    return x, x_mark


def _initial_noise(per_chunk: int, seed: int = 0) -> torch.Tensor:
    """The noise predict draws with ``per_chunk`` samples per chunk → (S, B, N, H).

    Each chunk draws (n·B, N, H) sample-major rows from the generator, in chunk order."""
    g = torch.Generator().manual_seed(seed)
    draws = [
        torch.randn((min(per_chunk, S - s) * B, N, H), generator=g) for s in range(0, S, per_chunk)
    ]
    return torch.cat(draws).view(S, B, N, H)


@pytest.mark.parametrize("name", ["iTransformerDiffusion", "iTransformerDiffusionDirect"])
@pytest.mark.parametrize("per_chunk", [1, 5, S])
def test_predict_equals_the_original_loop(name, per_chunk):
    """Same initial noise → the same samples as the looped original, however predict chunks
    the S·B trajectories (one sample per chunk, uneven chunks, one chunk of all)."""
    model = _model(name)
    x, x_mark = _inputs()
    mean, std, samples = model.predict(
        x, x_mark, n_samples=S, sampler="ddim", steps=STEPS,
        generator=torch.Generator().manual_seed(0), sample_chunk=per_chunk * B,
    )  # fmt: skip
    reference = looped_original(
        model, x, x_mark, S, STEPS, generator=None, noise=_initial_noise(per_chunk)
    )
    assert samples.shape == (S, B, H, N) and samples.dtype == torch.float32
    scale = reference.abs().max().item()
    assert (samples - reference).abs().max().item() < 1e-4 * scale
    assert torch.allclose(mean, reference.mean(0), atol=1e-4 * scale)
    assert torch.allclose(std, reference.std(0, unbiased=False), atol=1e-4 * scale)
    assert std.min() > 0  # the samples differ: the noise was not shared across samples


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
    chunks = -(-S // 10)
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


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")  # fmt: skip
def test_compiled_denoiser_gives_the_eager_samples_with_one_graph_per_shape():
    """--compile: the same samples as eager. Ten steps and two chunk shapes (an uneven last
    chunk) compile two graphs: the step is a tensor input, not a constant that recompiles at
    every step (past torch's limit of 8, dynamo would quietly fall back to eager)."""
    from torch._dynamo.utils import counters

    model = _model()
    x, x_mark = _inputs()

    def run():
        g = torch.Generator().manual_seed(0)
        return model.predict(x, x_mark, S, steps=10, generator=g, sample_chunk=12 * B)[2]

    eager = run()
    model.compile_denoiser()
    graphs = counters["stats"]["unique_graphs"]
    compiled = run()
    assert model._compiled.compiled is not None, "torch.compile fell back to eager"
    assert counters["stats"]["unique_graphs"] - graphs == 2
    scale = eager.abs().max().item()
    assert (compiled - eager).abs().max().item() < 1e-4 * scale
