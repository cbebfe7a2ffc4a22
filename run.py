"""Entry point: ``python run.py --task_name long_term_forecast --model iTransformer ...``.

Parses the arguments, derives the data dimensions, and hands over to the task's Exp class.
"""

from __future__ import annotations

import logging
import os
import sys

import torch

from data_provider.data_factory import resolve_dimensions
from data_provider.data_loader import DataError
from exp import get_exp_class
from exp.exp_basic import CheckpointError, check_same_data, set_seed, setting_name
from utils import distributed
from utils.args import build_parser, parse_args

log = logging.getLogger("tsdiff")


def attach_run_log(path: str) -> logging.Handler:
    """Everything this run logs (arguments, device, epochs, metrics) also goes to ``path``
    (on rank 0 only; other ranks get a handler that writes nowhere)."""
    if not distributed.is_main():
        return logging.FileHandler(os.devnull)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    return handler


def run_setting(exp, args, setting: str) -> dict:
    log.info("Args: %s", {k: v for k, v in vars(args).items() if k != "data_columns"})
    log.info("Data columns: %s", ", ".join(map(str, args.data_columns)))
    log.info("Device: %s", exp.device)
    if args.is_training:
        log.info(">>>>>>> start training : %s >>>>>>>", setting)
        exp.train(setting)
    log.info(">>>>>>> testing : %s <<<<<<<", setting)
    metrics = exp.test(setting, test=0 if args.is_training else 1)
    if args.do_predict:
        exp.predict_future(setting)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    args = parse_args(argv)
    if args.summarize is not None:  # print the table of earlier runs and stop: no training
        from utils import summarize

        given = args.results != build_parser().get_default("results")  # --results X
        folder = args.summarize or (args.results if given else summarize.default_results_dir())
        if summarize.main([folder]):
            raise SystemExit(1)  # it said why: no folder, or no run in it
        return {}
    distributed.setup(args)
    if not distributed.is_main():
        logging.getLogger("tsdiff").setLevel(logging.WARNING)  # rank 0 speaks for all
    resolve_dimensions(args)  # reads and checks the whole CSV: bad data stops the run here
    Exp = get_exp_class(args.task_name)
    metrics = {}
    for ii in range(args.itr):
        setting = setting_name(args, ii)
        if args.is_training:
            check_same_data(args, setting)  # never train over another data file's checkpoint
        set_seed(args.seed + ii)
        exp = Exp(args)
        run_log = attach_run_log(os.path.join(args.results, setting, "run.log"))
        try:
            metrics = run_setting(exp, args, setting)
        except Exception as e:  # recorded in run.log; cli() prints it once to the user
            run_log.stream.write(f"error: {e}\n")
            raise
        finally:
            log.removeHandler(run_log)
            run_log.close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    distributed.teardown()
    return metrics


def cli() -> None:
    """Problems a user can fix end the run with one sentence, not a traceback."""
    try:
        main()
    except (DataError, CheckpointError, FloatingPointError, distributed.LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if distributed.left_group():  # a torchrun worker: see distributed.exit_process
        distributed.exit_process(0)


if __name__ == "__main__":
    cli()
