"""Sampling benchmark: the batched hot path against a looped sampler.

Prints, on one model (trained with --checkpoint, else freshly initialised) and the same ETTh1
test windows:
  (a) trajectories·steps per second of ``predict`` (all samples x windows as one batch) and of a
      faithful
      re-implementation of a naive sampler (a Python loop over samples, the
      encoder recomputed at every step), at the same sampler, steps and samples, measured side
      by side in one run: the two alternate --repeats times and each keeps its fastest run
      (the machine's load varies from second to second on a shared host; every run is
      printed);
  (b) with --checkpoint, CRPS and seconds for DDPM 1000, DDIM 10/20/50/100 and DPM-Solver++
      5/10/20 (each sampler on its default timestep grid) on the same windows from the same
      initial noise;
  (c) the peak memory of the sampling runs.
The last line is ``speedup_vs_looped: <ratio>``.

    python scripts/benchmark_sampling.py --quick                 # < 2 minutes on a 2-core CPU
    python scripts/benchmark_sampling.py --checkpoint checkpoints/<setting>/checkpoint.pth
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_provider.data_factory import build_dataset, resolve_dimensions  # noqa: E402
from diffusion import ddim_update, timesteps, to_x0_eps  # noqa: E402
from exp.exp_basic import read_checkpoint  # noqa: E402
from models import iTransformerDiffusion  # noqa: E402
from models.iTransformerDiffusionDirect import Model as DirectModel  # noqa: E402
from utils.args import build_parser, check_args  # noqa: E402
from utils.metrics import crps_ensemble  # noqa: E402

TABLE = [("ddpm", 1000), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100),
         ("dpm_solver", 5), ("dpm_solver", 10), ("dpm_solver", 20)]  # fmt: skip


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint.pth of a diffusion_forecast run")
    p.add_argument("--quick", action="store_true", help="small model and few steps (CPU)")
    p.add_argument("--n_samples", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=32, help="windows per predict call")
    p.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    p.add_argument("--steps", type=int, default=None, help="default: 10 with --quick, else 50")
    p.add_argument("--table_windows", type=int, default=256, help="windows for table (b)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each, interleaved")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--root_path", default="./dataset/ETT-small/")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in predict (as --use_amp)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    return p.parse_args()


def model_args(opts) -> argparse.Namespace:
    """The run's arguments: from the checkpoint, or the quickstart or default sizes."""
    parser = build_parser()
    if opts.checkpoint:
        saved = read_checkpoint(opts.checkpoint)["args"]
        args = parser.parse_args([])
        vars(args).update(saved)
        return args
    argv = ["--task_name", "diffusion_forecast", "--model", "iTransformerDiffusion",
            "--root_path", opts.root_path, "--d_model", "128", "--d_ff", "128"]  # fmt: skip
    if opts.quick:
        argv += ["--unet_channels", "16,32,64", "--cond_dim", "64"]
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def build_model(args, opts, device):
    cls = DirectModel if args.model == "iTransformerDiffusionDirect" else None
    model = (cls or iTransformerDiffusion.Model)(args)
    if opts.checkpoint:
        model.load_state_dict(read_checkpoint(opts.checkpoint)["model"])
    return model.to(device).eval()


def windows(args, count: int, device):
    """The first ``count`` ETTh1 test windows → x (B, L, N), x_mark (B, L, M), y (B, H, N)."""
    data = build_dataset(args, "test")
    items = [data[i] for i in range(min(count, len(data)))]
    x, y, x_mark, _ = (torch.tensor(np.stack(t)).float().to(device) for t in zip(*items))
    return x, x_mark, y[:, -args.pred_len :]


@torch.inference_mode()
def looped_sampler(model, x, x_mark, n_samples, steps, generator, spacing="trailing"):
    """A naive sampler: a Python loop over samples; at every step the backbone
    and the condition are recomputed and the denoiser sees one sample of the batch (DDIM,
    η = 0, on the ``spacing`` grid)."""
    B, _, N = x.shape
    H = model.pred_len
    ab = model.alpha_bar.tolist()
    ts = timesteps(len(ab), steps, spacing)
    outs = []
    for _ in range(n_samples):
        sample = torch.randn((B, N, H), generator=generator, device=x.device)
        for i, t in enumerate(ts):
            y_det, z, norm = model.backbone_forward(x, x_mark)  # recomputed every step
            cond = model.denoiser.encode_condition(z, extra=model._extra(y_det, norm))
            t_batch = torch.full((B,), t, device=x.device)
            out = model.denoiser(sample, t_batch, cond)
            x0_hat, eps_hat = to_x0_eps(out, sample, ab[t], model.parameterization, model.clip_x0)
            a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
            sample, _ = ddim_update(x0_hat, eps_hat, ab[t], a_prev, 0.0)
        outs.append(model.from_diffusion(sample[None], y_det, norm)[0])
    return torch.stack(outs)  # (S, B, H, N)


def amp_dtype(opts):
    return torch.bfloat16 if opts.amp else None


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def peak_memory(device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux
    text = f"peak resident memory of this process: {rss:.0f} MiB"
    if device.type == "cuda":
        text += f"; peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return text


def throughput(model, args, opts, device) -> float:
    steps = opts.steps or (10 if opts.quick else 50)
    S, B = opts.n_samples, opts.batch_size
    x, x_mark, _ = windows(args, B, device)
    work = S * B * steps
    gen = torch.Generator(device=device)
    model.predict(x[:2], x_mark[:2], n_samples=2, sampler="ddim", steps=2)  # warm-up
    batched = lambda: model.predict(  # noqa: E731
        x, x_mark, S, opts.sampler, steps, spacing="trailing", generator=gen,
        autocast_dtype=amp_dtype(opts),
    )  # fmt: skip
    looped = lambda: looped_sampler(model, x, x_mark, S, steps, gen)  # noqa: E731
    compile_note = ""
    if opts.compile:
        model.compile_denoiser()
        gen.manual_seed(0)
        compile_seconds = timed(batched, device)[1]  # compiles each chunk shape, untimed below
        compile_note = f" (the first call, which compiled, took {compile_seconds:.1f} s)"
    times = {"batched": [], "looped": []}
    for _ in range(opts.repeats):  # interleaved, so that both see the same machine load
        for name, fn in (("batched", batched), ("looped", looped)):
            gen.manual_seed(0)
            times[name].append(timed(fn, device)[1])
    t_batched, t_looped = min(times["batched"]), min(times["looped"])
    extras = " + ".join(n for n, on in (("bf16", opts.amp), ("compile", opts.compile)) if on)
    print(f"(a) {S} samples x {B} windows x {steps} {opts.sampler} steps on {device}")
    print(f"    predict options: {extras or 'fp32, eager'}{compile_note}")
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    where = f" on {threads} torch threads" if threads else ""
    print(f"    predict: one chunk of {S} samples x {B} windows{where}")
    print("    the looped sampler: fp32, eager")
    print(f"    best of {opts.repeats} interleaved runs each (all runs, s: ", end="")
    print("; ".join(f"{n} " + " ".join(f"{t:.2f}" for t in ts) for n, ts in times.items()) + ")")
    print(f"    predict (batched): {work / t_batched:12.1f} trajectory-steps/s ({t_batched:.2f} s)")
    print(f"    looped sampler:    {work / t_looped:12.1f} trajectory-steps/s ({t_looped:.2f} s)")
    ratios = [tl / tb for tb, tl in zip(times["batched"], times["looped"])]
    print(f"    ratio of each pair: {' '.join(f'{r:.2f}' for r in ratios)}", end="")
    print(f" (median {float(np.median(ratios)):.2f})")
    return t_looped / t_batched


def crps_table(model, args, opts, device) -> None:
    x, x_mark, y = windows(args, opts.table_windows, device)
    print(f"(b) CRPS on {len(x)} test windows, {opts.n_samples} samples, same initial noise")
    print(f"    {'sampler':<12}{'steps':>6}{'CRPS':>10}{'seconds':>10}")
    for sampler, steps in TABLE:
        if steps > len(model.alpha_bar):
            continue
        gen = torch.Generator(device=device).manual_seed(0)
        (_, _, samples), sec = timed(
            lambda s=sampler, k=steps, g=gen: model.predict(
                x,
                x_mark,
                opts.n_samples,
                s,
                k,
                generator=g,
                center=bool(args.center_samples),
                autocast_dtype=amp_dtype(opts),
            ),
            device,
        )
        crps = crps_ensemble(samples, y).mean().item()
        print(f"    {sampler:<12}{steps:>6}{crps:>10.4f}{sec:>10.2f}")


def main() -> None:
    opts = parse()
    device = torch.device(opts.device)
    args = model_args(opts)
    resolve_dimensions(args)
    torch.manual_seed(0)
    model = build_model(args, opts, device)
    if opts.checkpoint:
        crps_table(model, args, opts, device)
    ratio = throughput(model, args, opts, device)
    print(f"(c) {peak_memory(device)}")
    print(f"speedup_vs_looped: {ratio:.2f}")


if __name__ == "__main__":
    main()
