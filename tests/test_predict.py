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

import contextlib
import importlib.util
import logging
import shutil
import threading
from pathlib import Path

import pytest
import torch

from models import iTransformerDiffusion
from models.iTransformerDiffusion import chunk_sizes
from models.iTransformerDiffusionDirect import Model as DirectModel
from utils.args import build_parser, check_args
from utils.tools import CompiledOrEager, run_on_threads

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


def _model(name: str = "iTransformerDiffusion", pred_len: int = H):
    parser = build_parser()
    argv = (
        f"--task_name diffusion_forecast --model {name} --seq_len {L} --label_len 16 "
        f"--pred_len {pred_len} --d_model 16 --d_ff 16 --n_heads 2 --e_layers 1 --cond_dim 16 "
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


@pytest.fixture
def two_threads():
    """torch on two CPU threads (the chunks' threads share them), whatever the machine has."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["iTransformerDiffusion", "iTransformerDiffusionDirect"])
@pytest.mark.parametrize("per_chunk", [1, 5, S])
@pytest.mark.parametrize("workers", [1, 2])
def test_predict_equals_the_original_loop(name, per_chunk, workers, two_threads):
    """The same seed → the same samples as the looped original, however predict chunks the
    S·B trajectories (one sample per chunk, uneven chunks, one chunk of all) and whether the
    chunks run one after another or on two threads: both draw sample s's initial noise as
    the generator's s-th (B, N, H) draw."""
    model = _model(name)
    x, x_mark = _inputs()
    mean, std, samples = model.predict(
        x, x_mark, n_samples=S, sampler="ddim", steps=STEPS,
        generator=torch.Generator().manual_seed(0), sample_chunk=per_chunk * B, workers=workers,
    )  # fmt: skip
    reference = looped_original(model, x, x_mark, S, STEPS, torch.Generator().manual_seed(0))
    assert samples.shape == (S, B, H, N) and samples.dtype == torch.float32
    scale = reference.abs().max().item()
    assert (samples - reference).abs().max().item() < 1e-4 * scale
    assert torch.allclose(mean, reference.mean(0), atol=1e-4 * scale)
    assert torch.allclose(std, reference.std(0, unbiased=False), atol=1e-4 * scale)
    assert std.min() > 0  # the samples differ: the noise was not shared across samples


def test_a_samples_noise_does_not_depend_on_the_chunks(two_threads):
    """Sample s starts from the generator's s-th (B, N, H) draw however the samples are
    chunked. With 3 windows x 3 variates x 21 steps, 189 values per sample, one draw of
    several samples would not equal the samples' separate draws (torch draws normals in
    blocks of 16), so chunking the draws would change the samples."""
    model = _model(pred_len=21)
    x, x_mark = _inputs()
    x, x_mark = x[:3], x_mark[:3]

    def run(per_chunk, workers):
        g = torch.Generator().manual_seed(0)
        return model.predict(x, x_mark, 7, steps=4, generator=g, sample_chunk=per_chunk * 3,
                             workers=workers)[2]  # fmt: skip

    reference = looped_original(model, x, x_mark, 7, 4, torch.Generator().manual_seed(0))
    scale = reference.abs().max().item()
    for per_chunk, workers in ((1, 1), (3, 1), (7, 1), (3, 2), (7, 2)):
        assert (run(per_chunk, workers) - reference).abs().max().item() < 1e-4 * scale
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
            for threads in (2, 3):
                many = chunk_sizes(n_samples, per_chunk, threads)
                assert sum(many) == n_samples and min(many) >= 1
                assert max(many) <= per_chunk and max(many) - min(many) <= 1
                # as many chunks as fit, rounded up to keep every thread busy to the end
                assert len(many) % threads == 0 or len(many) == n_samples
                assert len(many) >= len(one)
    assert chunk_sizes(100, 9, 2) == [9] * 4 + [8] * 8


def _chunk_spy(model, monkeypatch, meet: int = 0):
    """Records, for every chunk predict denoises, its thread and that thread's torch thread
    count, and the most chunks in flight at once. With ``meet``, the first ``meet`` chunks
    wait (up to 10 s) until all of them have started, so that chunks that can run at once
    are seen at once however the machine schedules the threads."""
    seen = {"threads": [], "torch_threads": [], "in_flight": 0, "most": 0}
    lock = threading.Lock()
    denoise = model._sample_chunk
    barrier = threading.Barrier(meet, timeout=10) if meet else None

    def spy(*args, **kwargs):
        with lock:
            seen["in_flight"] += 1
            seen["most"] = max(seen["most"], seen["in_flight"])
            seen["threads"].append(threading.get_ident())
            seen["torch_threads"].append(torch.get_num_threads())
            first = len(seen["threads"]) <= meet
        try:
            if first:  # a broken barrier: they ran one after another, seen["most"] tells
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait()
            return denoise(*args, **kwargs)
        finally:
            with lock:
                seen["in_flight"] -= 1

    monkeypatch.setattr(model, "_sample_chunk", spy)
    return seen


def test_chunks_run_on_two_threads_with_one_torch_thread_each(monkeypatch, two_threads):
    """On a CPU, deterministic samplers denoise two chunks at a time, each on its own thread
    with one of torch's two threads; afterwards torch has its two threads again, also for
    threads started later."""
    model = _model()
    seen = _chunk_spy(model, monkeypatch, meet=2)
    x, x_mark = _inputs()
    model.predict(x, x_mark, S, steps=STEPS, sample_chunk=5 * B)
    assert len(seen["threads"]) == 8  # ceil(32 / 5) = 7 chunks, rounded up to a multiple of 2
    assert threading.get_ident() not in seen["threads"]
    assert len(set(seen["threads"])) == 2 and seen["most"] == 2
    assert set(seen["torch_threads"]) == {1}
    assert torch.get_num_threads() == 2
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [2]


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.5)])
def test_samplers_that_draw_noise_at_every_step_give_the_same_samples_however_chunked(
    sampler, eta, monkeypatch, two_threads
):
    """Each sample's per-step noise comes from its own generator, seeded in sample order, so
    the samples depend on the seed only: not on the chunks, nor on the threads that run them
    (which would otherwise draw from one generator in whatever order they reach it)."""
    model = _model()
    seen = _chunk_spy(model, monkeypatch)
    x, x_mark = _inputs()

    def run(per_chunk, workers, seed=0):
        g = torch.Generator().manual_seed(seed)
        return model.predict(x, x_mark, S, sampler, 10, eta, generator=g,
                             sample_chunk=per_chunk * B, workers=workers)[2]  # fmt: skip

    reference = run(S, 1)
    scale = reference.abs().max().item()
    for per_chunk, workers in ((1, 1), (5, 1), (5, 2), (S, 2)):
        assert (run(per_chunk, workers) - reference).abs().max().item() < 1e-5 * scale
    workers = set(seen["threads"]) - {threading.get_ident()}
    assert len(workers) >= 2  # the 2-worker runs ran on threads of their own
    other = run(S, 1, seed=1)
    assert (other - reference).abs().mean() > 0.1 * reference.std(0).mean()


def test_per_sample_noise_streams():
    """Rows of sample i come from a generator seeded with seeds[i], and go on from there."""
    noise = iTransformerDiffusion.per_sample_noise([7, 8], torch.device("cpu"))
    x = torch.empty(2 * 3, 4)  # 2 samples x 3 windows, sample-major
    first, second = noise(x), noise(x)
    g7, g8 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
    expected = [torch.cat([torch.randn(3, 4, generator=g7), torch.randn(3, 4, generator=g8)])
                for _ in range(2)]  # fmt: skip
    assert torch.equal(first, expected[0]) and torch.equal(second, expected[1])
    assert not torch.equal(first[:3], first[3:]) and not torch.equal(first, second)


def test_a_failing_chunk_stops_the_threads_and_raises(monkeypatch, two_threads):
    model = _model()
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("chunk failed")

    monkeypatch.setattr(model, "_sample_chunk", broken)
    x, x_mark = _inputs()
    with pytest.raises(RuntimeError, match="chunk failed"):
        model.predict(x, x_mark, S, steps=STEPS, sample_chunk=B)  # 32 chunks
    assert len(calls) <= 2  # the two chunks in flight; none starts once one has failed
    assert torch.get_num_threads() == 2


def test_run_on_threads_makes_inputs_in_order_on_the_calling_thread():
    """The inputs (the chunks' initial noise) come from the calling thread in the items'
    order, as a plain loop would draw them, with at most ``workers`` of them alive."""
    made, done, alive = [], [], []
    lock = threading.Lock()

    def make_input(item):
        with lock:
            made.append((item, threading.get_ident()))
            alive.append(len(made) - len(done))
        return item * 10

    def job(item, inp):
        assert inp == item * 10 and torch.is_inference_mode_enabled()
        with lock:
            done.append(item)

    run_on_threads(job, range(20), make_input, workers=2)
    assert [item for item, _ in made] == list(range(20))
    assert {ident for _, ident in made} == {threading.get_ident()}
    assert sorted(done) == list(range(20)) and max(alive) <= 2


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
    chunks = len(chunk_sizes(S, 10, model.sample_workers(x.device)))
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
