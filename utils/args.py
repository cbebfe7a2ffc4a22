"""The command line, built from small argument groups.

Flags keep Time-Series-Library's names, meanings and defaults, except where TSLib's behaviour is a
known fault: unknown choices are errors listing the valid ones, ``enc_in/dec_in/c_out`` default to
the CSV's own dimensions, and every output folder comes from an argument.
"""

from __future__ import annotations

import argparse
import logging
import math

from data_provider.data_factory import DATA_CHOICES
from data_provider.data_loader import MISSING_MODES
from exp import TASK_REGISTRY
from models import MODEL_REGISTRY
from utils.tools import LRADJ_CHOICES

log = logging.getLogger("tsdiff")


def add_basic_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--task_name",
        default="long_term_forecast",
        choices=sorted(TASK_REGISTRY),
        help="task to run",
    )
    p.add_argument(
        "--is_training",
        type=int,
        default=1,
        choices=(0, 1),
        help="1: train then test; 0: test the checkpoint saved under --checkpoints",
    )
    p.add_argument("--model_id", default="test", help="free-form run name used in the setting")
    p.add_argument(
        "--model", default="iTransformer", choices=sorted(MODEL_REGISTRY), help="model name"
    )
    p.add_argument("--des", default="test", help="experiment description, part of the setting")
    p.add_argument("--itr", type=int, default=1, help="number of repetitions (seeds seed+i)")
    p.add_argument("--seed", type=int, default=2021, help="random seed")


def add_data_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--data",
        default="ETTh1",
        choices=DATA_CHOICES,
        help="dataset type: the ETT splits by calendar, 'custom' splits 7:1:2",
    )
    p.add_argument("--root_path", default="./dataset/ETT-small/", help="folder of the data file")
    p.add_argument("--data_path", default="ETTh1.csv", help="data file (CSV with a 'date' column)")
    p.add_argument(
        "--features",
        default="M",
        choices=("M", "S", "MS"),
        help="M: multivariate→multivariate, S: univariate→univariate, "
        "MS: multivariate→univariate (the target)",
    )
    p.add_argument("--target", default="OT", help="target column for S and MS (moved last)")
    p.add_argument(
        "--freq",
        default="h",
        help="time-feature frequency: s, t (minutely), h, d, b, w, m, y, or e.g. 15min",
    )
    p.add_argument(
        "--embed",
        default="timeF",
        choices=("timeF", "fixed", "learned"),
        help="time-feature encoding: timeF = continuous calendar features",
    )
    p.add_argument(
        "--missing",
        default="error",
        choices=MISSING_MODES,
        help="empty or NaN cells in the CSV: error (name the first one), interpolate (linear "
        "in row order per column, the ends from the nearest value) or ffill (the previous "
        "row's value, a leading gap from the first value); text is always an error",
    )


def add_output_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--checkpoints", default="./checkpoints/", help="folder of model checkpoints")
    p.add_argument("--results", default="./results/", help="folder of metrics and arrays")
    p.add_argument("--test_results", default="./test_results/", help="folder of figures")
    p.add_argument(
        "--result_file",
        default=None,
        help="text log appended after each test (default: result_<task_name>.txt)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train even where --checkpoints already holds this setting's checkpoint of "
        "another data file (it is replaced); without it such a run is refused",
    )
    p.add_argument(
        "--summarize",
        nargs="?",
        const="",
        default=None,
        metavar="RESULTS_DIR",
        help="print the table of every run under RESULTS_DIR (default: --results where given, "
        "else ./results/ where it exists, else the repository's results/) and exit",
    )


def add_forecast_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--seq_len", type=int, default=96, help="lookback length L")
    p.add_argument("--label_len", type=int, default=48, help="start-token length (decoders)")
    p.add_argument("--pred_len", type=int, default=96, help="horizon H")
    p.add_argument(
        "--inverse", action="store_true", help="also report metrics in the data's original units"
    )
    p.add_argument(
        "--do_predict",
        action="store_true",
        help="after training or testing, forecast the pred_len steps after the CSV's last row",
    )


def add_model_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--enc_in",
        type=int,
        default=None,
        help="encoder input size (default: derived from the CSV)",
    )
    p.add_argument(
        "--dec_in",
        type=int,
        default=None,
        help="decoder input size (default: derived from the CSV)",
    )
    p.add_argument("--c_out", type=int, default=None, help="output size (default: derived)")
    p.add_argument("--d_model", type=int, default=512, help="model width")
    p.add_argument("--n_heads", type=int, default=8, help="attention heads")
    p.add_argument("--e_layers", type=int, default=2, help="encoder layers")
    p.add_argument(
        "--d_layers", type=int, default=1, help="decoder layers (unused by iTransformer)"
    )
    p.add_argument("--d_ff", type=int, default=2048, help="feed-forward width")
    p.add_argument("--factor", type=int, default=1, help="attention factor")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout")
    p.add_argument("--activation", default="gelu", choices=("gelu", "relu"), help="activation")


def add_optimization_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--num_workers",
        type=int,
        default=10,
        help="data-loader workers (capped at the number of cores minus two)",
    )
    p.add_argument("--train_epochs", type=int, default=10, help="training epochs")
    p.add_argument("--batch_size", type=int, default=32, help="batch size")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience")
    p.add_argument("--learning_rate", type=float, default=0.0001, help="learning rate")
    p.add_argument("--loss", default="MSE", choices=("MSE",), help="training loss")
    p.add_argument(
        "--lradj",
        default="type1",
        choices=LRADJ_CHOICES,
        help="learning-rate schedule (TSLib's rules)",
    )
    p.add_argument("--use_amp", action="store_true", help="automatic mixed precision")
    p.add_argument(
        "--amp_dtype",
        default="bf16",
        choices=("bf16", "fp16"),
        help="AMP dtype; fp16 uses a GradScaler",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )


def add_device_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--use_gpu",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="use CUDA when available (falls back to CPU without it)",
    )
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    p.add_argument(
        "--use_multi_gpu",
        action="store_true",
        help="distributed data parallel; launch with torchrun",
    )
    p.add_argument("--devices", default="0,1,2,3", help="device ids for multi-GPU (torchrun)")


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help unless the help already names its default or
    there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings:
            return f"{text} (default: %(default)s)"
        return text


ARG_GROUPS = {
    "basic config": add_basic_args,
    "data": add_data_args,
    "outputs": add_output_args,
    "forecasting task": add_forecast_args,
    "model": add_model_args,
    "optimization": add_optimization_args,
    "device": add_device_args,
}


def build_parser(extra_groups: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time-Series-Library-style forecasting: point and diffusion models",
        formatter_class=DefaultsFormatter,
    )
    for title, add in {**ARG_GROUPS, **(extra_groups or {})}.items():
        add(parser.add_argument_group(title))
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations that cannot work fail at start-up with one clear sentence."""
    for name in ("seq_len", "pred_len", "batch_size", "train_epochs", "d_model", "n_heads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.label_len < 0 or args.label_len > args.seq_len:
        parser.error(f"--label_len must be in [0, seq_len={args.seq_len}], got {args.label_len}")
    if args.d_model % args.n_heads:
        parser.error(f"--d_model {args.d_model} is not divisible by --n_heads {args.n_heads}")
    if args.result_file is None:
        args.result_file = f"result_{args.task_name}.txt"
    check_diffusion_args(parser, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def add_diffusion_args(p: argparse._ArgumentGroup) -> None:
    from diffusion import PARAMETERIZATIONS, SAMPLERS, SCHEDULES, SPACINGS

    p.add_argument("--diffusion_steps", type=int, default=1000, help="training steps T")
    p.add_argument("--beta_schedule", default="cosine", choices=SCHEDULES, help="noise schedule")
    p.add_argument(
        "--parameterization",
        default=None,
        choices=PARAMETERIZATIONS,
        help="network target (default: the model's own: v for iTransformerDiffusion, x0 for "
        "iTransformerDiffusionDirect)",
    )
    p.add_argument("--cond_dim", type=int, default=256, help="width of the FiLM condition")
    p.add_argument("--unet_channels", default="64,128,256,512", help="UNet1D widths")
    p.add_argument(
        "--cond_forecast",
        type=int,
        default=1,
        choices=(0, 1),
        help="feed the normalised point forecast to the denoiser as extra channels",
    )
    p.add_argument(
        "--marginal",
        default="none",
        choices=("none", "empirical"),
        help="empirical: diffuse the target mapped to N(0, 1) through its training quantiles "
        "per (variate, step), and map samples back (a Gaussian copula); none: as is",
    )
    p.add_argument("--stage1_epochs", type=int, default=30, help="backbone warm-up epochs")
    p.add_argument("--stage2_epochs", type=int, default=20, help="joint diffusion epochs")
    p.add_argument("--stage1_lr", type=float, default=1e-4, help="AdamW lr, stage 1")
    p.add_argument("--stage2_lr", type=float, default=1e-4, help="AdamW lr of the denoiser")
    p.add_argument(
        "--projection_lr",
        type=float,
        default=1e-5,
        help="AdamW lr of the backbone's head in stage 2",
    )
    p.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument(
        "--loss_lambda",
        type=float,
        default=0.5,
        help="stage-2 loss = λ·MSE(point) + (1−λ)·diffusion loss",
    )
    p.add_argument("--n_samples", type=int, default=100, help="samples per window at test time")
    p.add_argument(
        "--sampler",
        default="ddim",
        choices=tuple(SAMPLERS),
        help="ddpm (ancestral), ddim, dpm_solver (DPM-Solver++ 2M)",
    )
    p.add_argument(
        "--use_ddim",
        dest="sampler",
        action="store_const",
        const="ddim",
        help="alias of --sampler ddim",
    )
    p.add_argument(
        "--sampling_steps",
        "--ddim_steps",
        dest="sampling_steps",
        type=int,
        default=50,
        help="denoising steps at test time (ddpm: all T if equal to T)",
    )
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (1 ≈ DDPM)")
    p.add_argument(
        "--timestep_spacing",
        default=None,
        choices=SPACINGS,
        help="which timesteps a few-step sampler visits (default: the sampler's own grid)",
    )
    p.add_argument(
        "--clip_x0",
        type=float,
        default=None,
        help="clamp of the predicted x0 in normalised units (default: 3 for "
        "iTransformerDiffusionDirect, 0 = off otherwise)",
    )
    p.add_argument(
        "--sample_chunk",
        type=int,
        default=None,
        help="most trajectories denoised at once (default: sized from free memory)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the denoiser for sampling (falls back to eager where unsupported)",
    )
    p.add_argument(
        "--ema_decay",
        type=float,
        default=0.0,
        help="EMA of the denoiser weights, used for evaluation (0 = off)",
    )
    p.add_argument(
        "--center_samples",
        type=int,
        default=1,
        choices=(0, 1),
        help="shift each window's samples so that their mean is the backbone's point forecast",
    )
    p.add_argument(
        "--calibrate_spread",
        default="variate",
        choices=("none", "global", "variate"),
        help="scale the samples' spread around their mean by the factor (one per variate, or "
        "one for all) that minimises CRPS on validation windows; fitted once per sampler "
        "setting and kept in the checkpoint; the mean is unchanged",
    )
    p.add_argument(
        "--calib_windows",
        type=int,
        default=256,
        help="validation windows (evenly spaced) used by --calibrate_spread",
    )
    p.add_argument(
        "--eval_split",
        default="test",
        choices=("test", "val"),
        help="split that testing scores (val: for ablations that must not look at test data)",
    )
    p.add_argument("--save_samples", action="store_true", help="also write samples.npy")
    p.add_argument(
        "--bounds",
        default=None,
        metavar="LOW,HIGH",
        help="physical range of the scored variates in original units: every sample (model "
        "and baselines) is clipped into it after the spread calibration; either side may be "
        "empty (0, means ≥ 0); write --bounds=-1,1 when LOW is negative",
    )
    p.add_argument(
        "--nonnegative", action="store_true", help="the same as --bounds 0, (samples ≥ 0)"
    )


ARG_GROUPS["diffusion"] = add_diffusion_args
#: Below this many samples per window, --center_samples 1 draws a warning.
FEW_SAMPLES = 20


def check_diffusion_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.sampling_steps < 1 or args.sampling_steps > args.diffusion_steps:
        parser.error(
            f"--sampling_steps {args.sampling_steps} must be between 1 and --diffusion_steps "
            f"{args.diffusion_steps}"
        )
    if args.n_samples < 1:
        parser.error(f"--n_samples must be at least 1, got {args.n_samples}")
    if args.calib_windows < 1:
        parser.error(f"--calib_windows must be at least 1, got {args.calib_windows}")
    if not 0.0 <= args.loss_lambda <= 1.0:
        parser.error(f"--loss_lambda must be in [0, 1], got {args.loss_lambda}")
    try:
        channels = [int(c) for c in args.unet_channels.split(",")]
    except ValueError:
        parser.error(f"--unet_channels must be comma-separated integers, got {args.unet_channels}")
    if not channels or min(channels) < 1:
        parser.error(f"--unet_channels must be positive integers, got {args.unet_channels}")
    try:
        args.bounds = parse_bounds(args.bounds, getattr(args, "nonnegative", False))
    except ValueError as e:
        parser.error(str(e))
    if args.bounds and args.task_name != "diffusion_forecast":
        log.warning("--bounds and --nonnegative bound diffusion_forecast samples; ignored here")
    if (
        args.task_name == "diffusion_forecast"
        and args.center_samples
        and args.n_samples < FEW_SAMPLES
        and getattr(args, "summarize", None) is None
    ):
        log.warning(
            "--center_samples 1 with only --n_samples %d: centring shifts the samples by their "
            "own mean, which makes so few samples depend on each other; use --n_samples %d or "
            "more, or --center_samples 0",
            args.n_samples, FEW_SAMPLES,
        )  # fmt: skip


def parse_bounds(bounds, nonnegative: bool = False) -> list[float | None] | None:
    """``--bounds LOW,HIGH`` (text, or an already parsed pair) and ``--nonnegative`` → ``[low,
    high]`` with None for an open side, or None without bounds; ValueError says what is wrong."""
    if bounds is None or isinstance(bounds, (list, tuple)):
        pair = [None, None] if bounds is None else list(bounds)
        text = None if bounds is None else ",".join("" if b is None else str(b) for b in pair)
    else:
        text = str(bounds)
        pair = [part.strip() for part in text.split(",")]
    if len(pair) != 2:
        raise ValueError(f"--bounds takes LOW,HIGH (either may be empty), got {text!r}")
    values: list[float | None] = []
    for part in pair:
        if part is None or part == "":
            values.append(None)
            continue
        try:
            value = float(part)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(
                f"--bounds takes two numbers LOW,HIGH (either may be empty), got {text!r}"
            )
        values.append(value)
    if nonnegative:
        if values[0] not in (None, 0.0):
            raise ValueError(
                f"--nonnegative sets the lower bound to 0, but --bounds {text} sets it to "
                f"{values[0]:g}; give one of them"
            )
        values[0] = 0.0
    if values == [None, None]:
        if bounds is None:
            return None
        raise ValueError(f"--bounds {text!r} bounds neither side; give LOW, HIGH or both")
    if None not in values and not values[0] < values[1]:
        raise ValueError(f"--bounds LOW,HIGH needs LOW < HIGH, got {text!r}")
    return values


def bounds_text(bounds) -> str:
    """``[0.0, None]`` → ``[0, inf)``: the range in interval notation."""
    low, high = bounds or (None, None)
    left = "(-inf" if low is None else f"[{low:g}"
    right = "inf)" if high is None else f"{high:g}]"
    return f"{left}, {right}"
