"""Training utilities: learning-rate rules, early stopping, atomic checkpoints, progress bars."""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

import torch
from tqdm import tqdm

log = logging.getLogger("tsdiff")

LRADJ_CHOICES = ("type1", "type2", "type3", "cosine", "constant")


def lr_for_epoch(lradj: str, base_lr: float, epoch: int, train_epochs: int) -> float | None:
    """TSLib's ``adjust_learning_rate`` rules; ``epoch`` is 1-based (the epoch just finished).

    Returns the learning rate for the next epoch, or None to leave it unchanged.
    """
    if lradj == "type1":
        return base_lr * (0.5 ** ((epoch - 1) // 1))
    if lradj == "type2":
        table = {2: 5e-5, 4: 1e-5, 6: 5e-6, 8: 1e-6, 10: 5e-7, 15: 1e-7, 20: 5e-8}
        return table.get(epoch)
    if lradj == "type3":
        return base_lr if epoch < 3 else base_lr * (0.9 ** ((epoch - 3) // 1))
    if lradj == "cosine":
        return base_lr / 2 * (1 + math.cos(epoch / train_epochs * math.pi))
    if lradj == "constant":
        return None
    raise ValueError(f"unknown --lradj {lradj!r}; choose from {', '.join(LRADJ_CHOICES)}")


def adjust_learning_rate(optimizer, epoch: int, args) -> None:
    lr = lr_for_epoch(args.lradj, args.learning_rate, epoch, args.train_epochs)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        log.info("Updating learning rate to %.3g", lr)


class EarlyStopping:
    """Stop after ``patience`` epochs without improvement of a score where lower is better."""

    def __init__(self, patience: int = 7, delta: float = 0.0):
        self.patience, self.delta = patience, delta
        self.counter = 0
        self.best: float | None = None
        self.early_stop = False

    def step(self, value: float) -> bool:
        """Record one validation value; True when it is the best so far."""
        if self.best is None or value < self.best - self.delta:
            self.best, self.counter = value, 0
            return True
        self.counter += 1
        log.info("EarlyStopping counter: %d out of %d", self.counter, self.patience)
        self.early_stop = self.counter >= self.patience
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"counter": self.counter, "best": self.best, "early_stop": self.early_stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counter, self.best = state["counter"], state["best"]
        self.early_stop = state["early_stop"]


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def progress(iterable: Iterable, **kwargs) -> Iterable:
    """tqdm bar on an interactive terminal, the plain iterable otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        return iterable
    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
