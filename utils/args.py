"""The command line, built from small argument groups.

Flags keep Time-Series-Library's names, meanings and defaults, except where TSLib's behaviour is a
known fault: unknown choices are errors listing the valid ones, ``enc_in/dec_in/c_out`` default to
the CSV's own dimensions, and every output folder comes from an argument.
"""

from __future__ import annotations

import argparse

from data_provider.data_factory import DATA_CHOICES
from exp import TASK_REGISTRY
from models import MODEL_REGISTRY
from utils.tools import LRADJ_CHOICES


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


def add_output_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--checkpoints", default="./checkpoints/", help="folder of model checkpoints")
    p.add_argument("--results", default="./results/", help="folder of metrics and arrays")
    p.add_argument("--test_results", default="./test_results/", help="folder of figures")
    p.add_argument(
        "--result_file",
        default=None,
        help="text log appended after each test (default: result_<task_name>.txt)",
    )


def add_forecast_args(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--seq_len", type=int, default=96, help="lookback length L")
    p.add_argument("--label_len", type=int, default=48, help="start-token length (decoders)")
    p.add_argument("--pred_len", type=int, default=96, help="horizon H")
    p.add_argument(
        "--inverse", action="store_true", help="also report metrics in the data's original units"
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args
