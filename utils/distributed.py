"""PyTorch DDP through torchrun: process-group set-up and the few collectives the tasks need.

Every helper is a no-op in a single process, so the tasks call them unconditionally.
"""

from __future__ import annotations

import logging
import os
import sys
from argparse import Namespace
from typing import Any

import torch
import torch.distributed as dist


class LaunchError(RuntimeError):
    """--use_multi_gpu without torchrun."""


def setup(args: Namespace) -> None:
    """Join the process group when launched by torchrun with --use_multi_gpu."""
    args.distributed = False
    args.rank, args.world_size, args.local_rank = 0, 1, 0
    if not args.use_multi_gpu:
        return
    if "WORLD_SIZE" not in os.environ:
        raise LaunchError(
            "--use_multi_gpu needs torchrun, which starts one process per device: "
            "torchrun --nproc_per_node K run.py ... --use_multi_gpu"
        )
    use_cuda = args.use_gpu and torch.cuda.is_available()
    args.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(args.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    args.distributed = True
    args.rank, args.world_size = dist.get_rank(), dist.get_world_size()


_left = False


def teardown() -> None:
    """Leave the process group together (a rank that finished first, such as rank 1, which
    writes no results, waits at the barrier)."""
    global _left
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _left = True


def left_group() -> bool:
    """Whether this process belonged to a process group that it has now left."""
    return _left


def exit_process(code: int = 0) -> None:
    """End a torchrun worker without interpreter finalization, once its group is destroyed.

    Gloo's worker threads drop their last reference to a finished collective (and to the
    collectives it waited on) shortly after ``wait()`` returns in Python. If that happens
    while the interpreter is finalizing, freeing a tensor that Python created (those of
    ``all_gather_object``) needs the GIL, the thread is killed on the way and C++ aborts:
    "terminate called without an active exception", SIGABRT, after a run that had
    succeeded (about one exit in ten on a 2-core CPU, a gdb backtrace shows
    ``ProcessGroupGloo::runLoop`` → ``~AsyncBarrierWork`` → ``decref_pyobject`` →
    ``take_gil`` → ``pthread_exit``). Everything the run writes is closed by then; this
    flushes the streams and leaves with ``os._exit``.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
