"""``data_provider(args, flag) -> (dataset, loader)`` as in TSLib, plus data-derived dimensions."""

from __future__ import annotations

import os
from argparse import Namespace

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, DistributedSampler

from data_provider.data_loader import (
    DataError,
    Dataset_Custom,
    Dataset_ETT_hour,
    Dataset_ETT_minute,
    ForecastDataset,
    read_series_csv,
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
        timeenc=timeenc(args),
        freq=args.freq,
        missing=getattr(args, "missing", "error"),
    )


def timeenc(args: Namespace) -> int:
    """TSLib's time encoding: 1 (continuous calendar features) for ``--embed timeF``, else 0."""
    return 0 if args.embed != "timeF" else 1


def time_marks(args: Namespace, stamps) -> np.ndarray:
    """(rows, M) the time features that the datasets of ``args`` give these timestamps."""
    return data_dict[args.data].marks_of(stamps, timeenc(args), args.freq)


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


def data_file(args: Namespace) -> str:
    """The CSV a run reads: ``--root_path`` joined with ``--data_path``."""
    return os.path.join(args.root_path, args.data_path)


def check_data(args: Namespace) -> pd.DataFrame:
    """Read and check the whole CSV exactly as the datasets will (the same reader, target and
    ``--missing``), and that every split holds a window; logs the cells ``--missing`` filled.

    Raises the DataError the datasets would raise, before anything is built or trained.
    """
    cls = data_dict[args.data]
    path = data_file(args)
    target = args.target if cls.needs_target(args.features) else None
    df = read_series_csv(path, target, getattr(args, "missing", "error"), report=True)
    cls.check_split_lengths(path, len(df), args.seq_len, args.pred_len)
    return df


def resolve_dimensions(args: Namespace) -> None:
    """Check the CSV (:func:`check_data`), then fill ``enc_in/dec_in/c_out`` from its columns;
    a contradicting value is an error. Also records ``data_columns`` and the absolute
    ``data_file``, which checkpoints keep."""
    columns = list(check_data(args).columns)
    args.data_columns = columns  # stored in checkpoints: a model is tied to its variates
    args.data_file = os.path.realpath(data_file(args))  # ... and to the file it learnt from
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
