"""Run names and experiments the way a user expects them (docs/decisions.md, "Runs").

- A run is named by `--run-name`, else the config's `run_name:`, else the config file's stem.
- Under `mlflow run` the run exists before our code runs: MLflow named it at random
  (`popular-boar-196`) unless `--run-name` was given. A random name is replaced; a chosen one kept.
- The config's `experiment:` is used when the caller named no experiment; `mlflow run` always
  picks one (Default without `--experiment-name`), so there a different one is only pointed out.

No mlflow import at module level: launch.py (the measuring process) uses the pure helpers.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

# MLflow's generated names: predicate-noun-number (mlflow.utils.name_utils._generate_random_name).
_GENERATED_SHAPE = re.compile(r"^(?P<predicate>[a-z]+)-(?P<noun>[a-z]+)-(?P<number>\d{1,4})$")
EXPERIMENT_ENV = ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


def run_name_for(cfg: Any, config_path: str | Path, given: str | None = None) -> str:
    """`--run-name`, else the config's `run_name:`, else the config file's stem (`quickstart`)."""
    return given or cfg.run_name or Path(config_path).stem


def experiment_for(cfg: Any, experiment_name: str | None, experiment_id: str | None) -> str | None:
    """The experiment name to create the run in: the config's `experiment:` when the caller named none."""
    if experiment_name or experiment_id or any(os.environ.get(name) for name in EXPERIMENT_ENV):
        return experiment_name
    return cfg.experiment


def is_generated_name(name: str | None) -> bool:
    """True for a name MLflow made up (`popular-boar-196`), from its own word lists."""
    match = _GENERATED_SHAPE.match(name or "")
    if not match:
        return False
    from mlflow.utils import name_utils

    return (
        match["predicate"] in {w.lower() for w in name_utils._GENERATOR_PREDICATES}
        and match["noun"] in {w.lower() for w in name_utils._GENERATOR_NOUNS}
    )


def name_run_if_generated(client: Any, run_id: str, name: str) -> bool:
    """Rename the run to `name` when MLflow named it at random; True when renamed."""
    run = client.get_run(run_id)
    if run.info.run_name == name or not is_generated_name(run.info.run_name):
        return False
    client.update_run(run_id, name=name)
    return True


def name_existing_run(logger: Any, name: str, explicit: bool, experiment: str | None) -> None:
    """Runs in the reporter's worker, for the run `mlflow run` made (MLFLOW_RUN_ID)."""
    if explicit:
        logger.client.update_run(logger.run_id, name=name)
    else:
        name_run_if_generated(logger.client, logger.run_id, name)
    if experiment:
        run = logger.client.get_run(logger.run_id)
        actual = logger.client.get_experiment(run.info.experiment_id).name
        if actual != experiment:
            print(
                f"note: the config asks for experiment {experiment!r}, but `mlflow run` created this run in "
                f"{actual!r} before the config was read; pass --experiment-name {experiment} to mlflow run",
                file=sys.stderr,
                flush=True,
            )
