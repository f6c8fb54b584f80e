"""Bad input found from the config alone, before a run exists (so `llem-mlflow run` makes none):
an unknown `random:` preset, a `random:` preset whose context window the lengths exceed, a local
model path or a dataset file that is not there. Reads no weights and imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llem_mlflow.bench.context import check_fits, context_window
from llem_mlflow.bench.loading import local_model_problem
from llem_mlflow.bench.prompts import check_prompt_file
from llem_mlflow.bench.random_models import PRESETS, is_random_model, preset_name
from llem_mlflow.errors import ModelLoadError


def check_inputs(cfg: Any) -> None:
    model = cfg.model
    if is_random_model(model):
        check_fits(cfg, context_window(PRESETS[preset_name(model)].shapes), model)
    elif not model.startswith("models:/"):
        problem = local_model_problem(model)
        if problem:
            raise ModelLoadError(problem)
    if cfg.dataset.source not in ("builtin", "synthetic"):
        check_prompt_file(Path(cfg.dataset.source))
