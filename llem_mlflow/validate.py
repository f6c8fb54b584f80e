"""`llem-mlflow validate`: check an experiment config or a study file without running anything.

No heavy import (torch, transformers, mlflow, codecarbon): the check answers in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llem_mlflow.errors import ConfigError


@dataclass(frozen=True)
class Checked:
    kind: str  # "config" | "study"
    text: str  # the normalised config (YAML), or the study's plan
    summary: str  # one line, for several files at once


def check_file(path: str, overrides: tuple[str, ...] = ()) -> Checked:
    """Validate one file; a ConfigError lists every problem it has."""
    from llem_mlflow.config.loader import read_mapping
    from llem_mlflow.sweep.study import looks_like_study

    data = read_mapping(Path(path))
    if looks_like_study(data):
        if overrides:
            raise ConfigError(f"{path} is a study file: -o overrides apply to experiment configs (change its base instead)")
        return _check_study(data, path)
    return _check_config(data, path, overrides)


def _check_config(data: dict, path: str, overrides: tuple[str, ...]) -> Checked:
    from llem_mlflow.config.loader import apply_overrides, validate_config
    from llem_mlflow.config.params import config_hash, config_to_yaml

    apply_overrides(data, overrides)
    cfg = validate_config(data, source=path)
    return Checked("config", config_to_yaml(cfg), f"experiment config, hash {config_hash(cfg)}")


def _check_study(data: dict, path: str) -> Checked:
    from llem_mlflow.cli_sweep import plan_lines
    from llem_mlflow.sweep.study import build_study

    study = build_study(data, source=path, base_dir=Path(path).parent)
    summary = f"study {study.name!r}, {len(study.points)} point(s)" + (f", {len(study.skipped)} skipped" if study.skipped else "")
    return Checked("study", "\n".join(plan_lines(study)) + "\n", summary)
