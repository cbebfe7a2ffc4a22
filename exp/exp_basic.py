"""What every task shares: device, seeding, model registry, self-describing checkpoints."""

from __future__ import annotations

import importlib
import logging
import os
import random
import re
from argparse import Namespace
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data_provider.data_factory import data_provider
from models import MODEL_REGISTRY
from utils import distributed
from utils.args import build_parser
from utils.tools import atomic_save

log = logging.getLogger("tsdiff")

# Arguments that determine a model's shapes or meaning: a checkpoint must agree on all of them.
ARCH_ARGS = (
    "model", "features", "target", "enc_in", "dec_in", "c_out", "seq_len", "pred_len", "d_model",
    "n_heads", "e_layers", "d_ff", "factor", "activation", "embed", "freq", "data_columns",
)  # fmt: skip


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used with these arguments; the message says why."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (seeds legacy global users, e.g. sklearn)
    torch.manual_seed(seed)


def select_device(args: Namespace) -> torch.device:
    """CUDA when asked for and present, else CPU: no flag is needed on a CPU-only machine."""
    if args.use_gpu and torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", args.gpu)) if args.use_multi_gpu else args.gpu
        return torch.device(f"cuda:{index}")
    return torch.device("cpu")


def cpu_supports(amp_dtype: str) -> bool:
    """Whether oneDNN runs ``amp_dtype`` ("bf16" or "fp16") natively on this CPU
    (avx512_bf16 or AMX for bf16); True where torch cannot tell."""
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}
    try:
        return bool(getattr(torch.ops.mkldnn, check[amp_dtype])())
    except (AttributeError, KeyError, RuntimeError):
        return True


def setting_name(args: Namespace, ii: int) -> str:
    """TSLib-style run name; the folder under --checkpoints, --results and --test_results.

    TSLib's name with the data file's stem after ``--data`` (``custom_weather``), so that two
    CSVs never share a folder; the stem is left out where it equals ``--data`` (``ETTh1`` with
    ETTh1.csv keeps TSLib's name).
    """
    return (
        f"{args.task_name}_{args.model_id}_{args.model}_{data_label(args)}_ft{args.features}"
        f"_sl{args.seq_len}_ll{args.label_len}_pl{args.pred_len}_dm{args.d_model}"
        f"_nh{args.n_heads}_el{args.e_layers}_df{args.d_ff}_fc{args.factor}"
        f"_eb{args.embed}_{args.des}_{ii}"
    )


def data_label(args: Namespace) -> str:
    """``--data``, then the data file's stem unless it is the same (characters other than
    letters, digits, ``.``, ``_`` and ``-`` become ``-``)."""
    stem = re.sub(r"[^\w.-]", "-", Path(args.data_path).stem)
    return args.data if stem in ("", args.data) else f"{args.data}_{stem}"


#: The checkpoints of one setting that training overwrites (or --resume continues).
TRAINING_CHECKPOINTS = ("checkpoint.pth", "checkpoint_last.pth")


def check_same_data(args: Namespace, setting: str) -> None:
    """Refuse to train over a checkpoint of this setting that was built from another data file
    (another absolute path, or other columns), unless ``--overwrite``. Checkpoints of the same
    file (a re-run) and unreadable ones pass: training replaces them."""
    now_file, now_columns = _data_identity(vars(args))
    for name in TRAINING_CHECKPOINTS:
        path = os.path.join(args.checkpoints, setting, name)
        saved = _saved_args(path)
        if saved is None:
            continue
        then_file, then_columns = _data_identity(saved)
        other_file = then_file is not None and then_file != now_file
        other_columns = None not in (then_columns, now_columns) and then_columns != now_columns
        if not (other_file or other_columns):
            continue
        if other_file:
            what = f"{path} was built from {then_file}, not from {now_file}"
        else:
            what = (
                f"{path} was built from {then_file} when its columns were {then_columns}, "
                f"not {now_columns}"
            )
        if not getattr(args, "overwrite", False):
            raise CheckpointError(
                f"{what}; training would overwrite it, so give this run its own --model_id or "
                "--checkpoints, or add --overwrite to replace it"
            )
        if name == "checkpoint_last.pth" and getattr(args, "resume", False):
            raise CheckpointError(f"{what}, and --resume would continue it; leave --resume out")
        log.warning("--overwrite: %s; replacing it", what)


def _saved_args(path: str) -> dict[str, Any] | None:
    """The arguments stored in a checkpoint, or None where there is no readable one."""
    if not os.path.isfile(path):
        return None
    state = None
    for mmap in (True, False):  # mmap: the weights are not read
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception:  # truncated or foreign: training replaces it, nothing to protect
            continue
    saved = state.get("args") if isinstance(state, dict) else None
    return saved if isinstance(saved, dict) else None


def _data_identity(args: dict[str, Any]) -> tuple[str | None, list | None]:
    """(absolute path of the data file, its columns) of a run's arguments; a checkpoint
    without ``data_file`` has its relative paths resolved from the current folder."""
    path = args.get("data_file")
    if path is None and args.get("data_path") is not None:
        path = os.path.realpath(os.path.join(args.get("root_path") or "", args["data_path"]))
    columns = args.get("data_columns")
    return path, (list(columns) if columns is not None else None)


class Exp_Basic:
    supported_models: tuple[str, ...] = tuple(MODEL_REGISTRY)

    def __init__(self, args: Namespace):
        if args.model not in self.supported_models:
            raise ValueError(
                f"--model {args.model} cannot run --task_name {args.task_name}; "
                f"choose from {', '.join(self.supported_models)}"
            )
        self.args = args
        self.device = select_device(args)
        log.info("Use %s", self.device)
        if args.use_amp and self.device.type == "cpu" and not cpu_supports(args.amp_dtype):
            log.warning(
                "--use_amp %s: this CPU has no %s instructions, so oneDNN emulates them and "
                "mixed precision runs slower than float32; leave --use_amp out here",
                args.amp_dtype, args.amp_dtype,
            )  # fmt: skip
        self.model = self._build_model().to(self.device)
        self.is_main = distributed.is_main()

    # ---- building ------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        module = importlib.import_module(MODEL_REGISTRY[self.args.model])
        return module.Model(self.args).float()

    def _get_data(self, flag: str):
        return data_provider(self.args, flag)

    def arch_args(self) -> tuple[str, ...]:
        module = importlib.import_module(MODEL_REGISTRY[self.args.model])
        return ARCH_ARGS + tuple(getattr(module, "ARCH_ARGS", ()))

    def amp_dtype(self) -> torch.dtype | None:
        """The mixed-precision dtype of --use_amp, or None."""
        if not self.args.use_amp:
            return None
        return torch.bfloat16 if self.args.amp_dtype == "bf16" else torch.float16

    def autocast(self) -> AbstractContextManager:
        dtype = self.amp_dtype()
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ---- paths ---------------------------------------------------------------------------
    def checkpoint_path(self, setting: str, name: str = "checkpoint.pth") -> str:
        return os.path.join(self.args.checkpoints, setting, name)

    def results_dir(self, setting: str) -> str:
        path = os.path.join(self.args.results, setting)
        os.makedirs(path, exist_ok=True)
        return path

    # ---- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, path: str, **meta: Any) -> None:
        """Weights + the arguments that built them (+ stage, epoch, score, ...), atomically.
        Only rank 0 writes; the others wait until the file is there."""
        if not self.is_main:
            distributed.barrier()
            return
        state = {
            "model": self.unwrapped_model().state_dict(),
            "args": {k: v for k, v in vars(self.args).items() if _is_plain(v)},
            **meta,
        }
        atomic_save(state, path)
        distributed.barrier()

    def unwrapped_model(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def wrap_ddp(self) -> None:
        """(Re-)wrap the model in DDP over the parameters that train now (after any freezing),
        so no stage has unused parameters. A no-op in a single process."""
        if not distributed.active():
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = self.unwrapped_model()
        ids = [self.device.index] if self.device.type == "cuda" else None
        # the only buffer (the marginal table) is fitted alike on every rank: no broadcast
        self.model = DDP(module, device_ids=ids, forward_sync_buffers=False)

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        """Load weights after checking the checkpoint was built with these arguments."""
        state = read_checkpoint(path)
        # an argument added after the checkpoint was written: it was built with the default
        saved = {**vars(build_parser().parse_args([])), **state["args"]}
        differ = [
            f"{_arg_name(k)} {_as_plain(saved.get(k))!r} in the checkpoint vs "
            f"{_as_plain(getattr(self.args, k, None))!r} now"
            for k in self.arch_args()
            if _as_plain(saved.get(k)) != _as_plain(getattr(self.args, k, None))
        ]
        if differ:
            raise CheckpointError(
                f"checkpoint {path} was built with other arguments: " + "; ".join(differ)
            )
        self.unwrapped_model().load_state_dict(state["model"])
        return state


def read_checkpoint(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(
            f"no checkpoint at {path}; train first (--is_training 1) or point --checkpoints "
            "at the folder that holds it"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or corrupt file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "args" not in state:
        raise CheckpointError(f"{path} is not a checkpoint written by this project")
    return state


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple))


class TrainingLoopMixin:
    """One epoch of training and one pass of validation over ``self._batch_loss``.

    ``_batch_loss(batch, stage) -> (loss, pred, true)`` is the only thing a task defines; the
    same function serves training and validation, so the two can never drift apart.
    """

    def _to_device(self, batch) -> list[torch.Tensor]:
        return [t.float().to(self.device, non_blocking=True) for t in batch]

    def _train_epoch(
        self, loader, optimizer, scaler, stage: str, epoch: int, after_step=None
    ) -> float:
        from utils.tools import progress

        self.model.train()
        if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle per epoch
            loader.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for step, batch in enumerate(progress(loader, desc=f"{stage} epoch {epoch}")):
            optimizer.zero_grad(set_to_none=True)
            loss, _, _ = self._batch_loss(batch, stage)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} in stage {stage}, epoch {epoch}, step {step}"
                )
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if after_step is not None:
                after_step()
            n = batch[0].shape[0]
            total, count = total + loss.item() * n, count + n
        return total / max(count, 1)

    @torch.no_grad()
    def _eval_loss(self, loader, stage: str) -> float:
        self.model.eval()
        total, count = 0.0, 0
        for batch in loader:
            loss, _, _ = self._batch_loss(batch, stage)
            n = batch[0].shape[0]
            total, count = total + loss.item() * n, count + n
        return total / max(count, 1)

    def grad_scaler(self) -> torch.amp.GradScaler:
        enabled = self.args.use_amp and self.args.amp_dtype == "fp16"
        return torch.amp.GradScaler(self.device.type, enabled=enabled)


def _arg_name(key: str) -> str:
    return "the data's columns" if key == "data_columns" else f"--{key}"


def _as_plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
