"""``data_provider(args, flag) -> (dataset, loader)`` as in TSLib, plus data-derived dimensions."""

from __future__ import annotations

import os
from argparse import Namespace

import pandas as pd
from torch.utils.data import DataLoader, DistributedSampler

from data_provider.data_loader import (
    DataError,
    Dataset_Custom,
    Dataset_ETT_hour,
    Dataset_ETT_minute,
    ForecastDataset,
)

data_dict: dict[str, type[ForecastDataset]] = {
    "ETTh1": Dataset_ETT_hour,
    "ETTh2": Dataset_ETT_hour,
    "ETTm1": Dataset_ETT_minute,
    "ETTm2": Dataset_ETT_minute,
    "custom": Dataset_Custom,
}
DATA_CHOICES = tuple(data_dict)


def build_dataset(args: Namespace, flag: str) -> ForecastDataset:
    return data_dict[args.data](
        root_path=args.root_path,
        data_path=args.data_path,
        flag=flag,
        size=(args.seq_len, args.label_len, args.pred_len),
        features=args.features,
        target=args.target,
        timeenc=0 if args.embed != "timeF" else 1,
        freq=args.freq,
    )


def loader_workers(requested: int) -> int:
    """TSLib's ``--num_workers`` capped so that workers never outnumber spare cores."""
    return max(0, min(requested, (os.cpu_count() or 1) - 2))


def data_provider(args: Namespace, flag: str) -> tuple[ForecastDataset, DataLoader]:
    """Train loader shuffled; val and test loaders keep order and never drop a window."""
    dataset = build_dataset(args, flag)
    shuffle = flag == "train"
    sampler = None
    if getattr(args, "distributed", False) and flag == "train":
        sampler = DistributedSampler(dataset, shuffle=True, seed=args.seed)
        shuffle = False
    workers = loader_workers(args.num_workers)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=False,
    )
    return dataset, loader


def csv_columns(args: Namespace) -> list[str]:
    """Header of the CSV (without reading the rows)."""
    path = os.path.join(args.root_path, args.data_path)
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path} (check --root_path and --data_path)")
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"cannot read {path} as CSV: {e}") from e


def resolve_dimensions(args: Namespace) -> None:
    """Fill ``enc_in/dec_in/c_out`` from the CSV header; a contradicting value is an error."""
    columns = csv_columns(args)
    if "date" not in columns:
        path = os.path.join(args.root_path, args.data_path)
        raise DataError(f"{path} has no 'date' column; its columns are {columns}")
    args.data_columns = columns  # stored in checkpoints: a model is tied to its variates
    n = len(columns) - 1
    derived = {
        "enc_in": 1 if args.features == "S" else n,
        "dec_in": 1 if args.features == "S" else n,
        "c_out": n if args.features == "M" else 1,
    }
    for name, value in derived.items():
        given = getattr(args, name, None)
        if given is not None and given != value:
            raise DataError(
                f"--{name} {given} contradicts the data: {args.data_path} with --features "
                f"{args.features} has {value} (leave --{name} out to derive it)"
            )
        setattr(args, name, value)
