"""Task registry: ``--task_name`` → ``module:ExpClass`` (imported lazily, so --help stays fast)."""

from __future__ import annotations

import importlib

TASK_REGISTRY: dict[str, str] = {
    "long_term_forecast": "exp.exp_long_term_forecasting:Exp_Long_Term_Forecast",
    "diffusion_forecast": "exp.exp_diffusion_forecast:Exp_Diffusion_Forecast",
}


def get_exp_class(task_name: str) -> type:
    module_name, class_name = TASK_REGISTRY[task_name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
