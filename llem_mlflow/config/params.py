"""Config <-> flat MLflow params, both directions.

Encoding (documented in docs/config.md, "Config as MLflow params"):
- every leaf field of every section, dotted: `pytorch.bnb_4bit_quant_type`;
- None is the string "None" (MLflow's own rendering of None);
- bools "True"/"False", numbers as Python writes them (floats round-trip exactly);
- dict fields (`tags`, `passthrough_kwargs`, `pytorch.max_memory`, ...) as compact JSON;
- an unset optional section (`registry`) is the single param `registry` = "None".

The key `config` is never written: `mlflow run` logs the config path there.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from pydantic import BaseModel

from llem_mlflow.config.base import NONE_TEXT
from llem_mlflow.config.loader import _section_model, validate_config
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.errors import ConfigError

NONE_PARAM = NONE_TEXT
# Params that `mlflow run` logs from MLproject's entry points, not config fields.
MLPROJECT_PARAMS = frozenset({"config", "overrides"})
# MLflow's limits on one param.
MAX_KEY_LENGTH = 250
MAX_VALUE_LENGTH = 6000
# Fields that do not change what is measured; left out of the config hash.
UNHASHED_FIELDS = frozenset({"tags", "registry", "experiment", "run_name"})


def config_to_params(cfg: ExperimentConfig) -> dict[str, str]:
    """Flatten a config into MLflow params (every field, dotted keys)."""
    params: dict[str, str] = {}
    _flatten(cfg, "", params)
    check_mlflow_limits(params)
    return params


def check_mlflow_limits(params: dict[str, str]) -> None:
    """Refuse (never truncate) a param MLflow would reject, and the reserved MLproject keys."""
    for key, value in params.items():
        if key in MLPROJECT_PARAMS:
            raise ConfigError(f"param {key!r} is reserved: `mlflow run` logs it itself")
        if len(key) > MAX_KEY_LENGTH:
            raise ConfigError(
                f"param name {key[:60]!r}... is {len(key)} characters; MLflow allows {MAX_KEY_LENGTH}: use a shorter name"
            )
        if len(value) > MAX_VALUE_LENGTH:
            raise ConfigError(
                f"{key} is {len(value)} characters once written as an MLflow param; MLflow allows "
                f"{MAX_VALUE_LENGTH}: shorten it (long passthrough values belong in a file the model reads)"
            )


def _flatten(model: BaseModel, prefix: str, out: dict[str, str]) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            _flatten(value, key + ".", out)
        else:
            out[key] = encode_value(value)


def encode_value(value: Any) -> str:
    if value is None:
        return NONE_PARAM
    if isinstance(value, dict):
        return json.dumps(_string_keys(value), sort_keys=True, separators=(",", ":"), default=str)
    return str(value)  # the text "None" never gets here: ConfigSection refuses it as a value


def _string_keys(value: Any) -> Any:
    """JSON object keys are strings; GPU indices such as 0 become "0" (decoded back by the field)."""
    if isinstance(value, dict):
        return {str(k): _string_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_string_keys(v) for v in value]
    return value


def config_from_params(params: dict[str, str]) -> ExperimentConfig:
    """Rebuild the config that `config_to_params` wrote (MLproject params are ignored)."""
    data: dict[str, Any] = {}
    for key, raw in params.items():
        if key in MLPROJECT_PARAMS:
            continue
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parents[: i + 1])
                raise ConfigError(f"MLflow params {section} and {key} conflict: {section} is not a section")
        if isinstance(node.get(leaf), dict):
            raise ConfigError(f"MLflow param {key} conflicts with the params under {key}.")
        node[leaf] = _decode_value(key, raw)
    return validate_config(data, source="MLflow params")


def _decode_value(key: str, raw: str) -> Any:
    if raw == NONE_PARAM:
        return None
    if key in _dict_field_keys():
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(f"MLflow param {key} = {raw[:60]!r} is not the JSON object it should hold") from None
    return raw  # pydantic's lax mode parses "3", "0.5", "True" into the field's type


@functools.cache
def _dict_field_keys() -> frozenset[str]:
    """Dotted keys of the fields that hold dicts (written as JSON)."""
    keys: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            section = _section_model(field.annotation)
            if section is not None:
                walk(section, f"{prefix}{name}.")
            elif "dict" in str(field.annotation):
                keys.add(prefix + name)

    walk(ExperimentConfig, "")
    return frozenset(keys)


def config_hash(cfg: ExperimentConfig) -> str:
    """Short stable hash of everything that changes the measurement."""
    payload = cfg.model_dump(mode="json", exclude=set(UNHASHED_FIELDS))
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The normalised config as YAML (every field, defaults included)."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
