"""Read an experiment config from YAML/JSON plus dotted command-line overrides.

Every failure becomes a `ConfigError` whose message names the file, the
dotted field path, what was given and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llem_mlflow.config.bounded_yaml import MAX_FILE_BYTES, TooLarge, safe_load
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.errors import ConfigError
from llem_mlflow.redact import ENV_REFERENCE, is_secret_key, redact_text


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load, override and validate one experiment config file."""
    path = Path(path)
    data = read_mapping(path)
    apply_overrides(data, overrides)
    return validate_config(data, source=str(path))


def read_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON file whose top level must be a mapping."""
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} not found: check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory: give the path of a .yaml or .json file")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # never more: a huge file is refused, not read
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"config file {str(path)!r} is larger than {MAX_FILE_BYTES // 1024} KiB: that is not an experiment or "
            "study config; check the path (long values belong in files the config names)"
        )
    data = parse_text(text, str(path), as_json=path.suffix.lower() == ".json")
    if data is None:
        raise ConfigError(f"config file {str(path)!r} is empty: it needs at least `model: <hub id or random:tiny>`")
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of fields (key: value), not a {type(data).__name__}"
        )
    return data


def parse_text(text: str, source: str, as_json: bool = False) -> Any:
    """Parse YAML (or JSON) text, turning syntax errors into a message with the line."""
    try:
        if as_json:
            return json.loads(text) if text.strip() else None
        return safe_load(text)
    except TooLarge as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid YAML: {type(exc).__name__}: {exc}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply `section.field=value` overrides in place; values are YAML scalars/flow values."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {redact_text(item)!r} must look like section.field=value, e.g. decoder.top_p=0.9")
        set_dotted(data, key, override_value(key, raw), what=f"override {redact_text(item)!r}")


def override_value(key: str, raw: str) -> Any:
    """An override's value: a YAML scalar/flow value, or `${NAME}`: the text of environment variable
    NAME (so a secret never travels on a command line or in `mlflow run`'s params)."""
    reference = ENV_REFERENCE.match(raw.strip())
    if reference:
        name = reference["name"]
        if name not in os.environ:
            raise ConfigError(f"override {key}=${{{name}}}: the environment variable {name} is not set; export it first")
        return os.environ[name]
    return parse_text(raw, f"override {key}") if raw.strip() else None


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str) -> None:
    """Set data['a']['b'] = value for key 'a.b', creating sections as needed."""
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(parents[: i + 1])} is not a section, it holds {child!r}")
        node = child
    node[leaf] = value


def validate_config(data: dict[str, Any], source: str) -> ExperimentConfig:
    """Validate a mapping, reporting every problem with its dotted path."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        lines = [describe_error(err) for err in exc.errors(include_url=False)]
        raise ConfigError(f"{source}: {len(lines)} problem(s) in the config:\n" + "\n".join(f"  - {l}" for l in lines)) from None
    except RecursionError:
        raise ConfigError(f"{source}: the config is nested too deeply to be a valid experiment") from None


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error as a sentence a person can act on."""
    loc = tuple(err.get("loc", ()))
    path = ".".join(str(p) for p in loc) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"{path}: unknown field{did_you_mean(loc)}"
    if kind == "missing":
        return f"{path}: required field is missing"
    message = str(err.get("msg", "")).removeprefix("Value error, ")
    if kind == "value_error":
        # Cross-field rules name their fields themselves; a top-level one needs no "(top level)".
        return f"{path}: {message}" if loc else message
    given = err.get("input")
    if any(is_secret_key(part) for part in loc):
        return f"{path}: {message} (value not shown: the field looks like a secret)"
    shown = repr(given)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    hint = ""
    if kind == "string_type" and isinstance(given, (int, float)) and not isinstance(given, bool):
        # YAML reads 1234567 or 1.10 as a number; a commit id or version must be quoted.
        hint = f"; YAML read it as a number: write it in quotes, e.g. \"{given}\""
    return f"{path}: {message} (got {shown}){hint}"


def did_you_mean(loc: tuple) -> str:
    """' - did you mean "x"?' for an unknown key, from the fields allowed at its level."""
    model: type[BaseModel] | None = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        model = _section_model(field.annotation) if field else None
    if model is None:
        return ""
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    prefix = ".".join(str(p) for p in loc[:-1])
    if close:
        return f' - did you mean "{prefix + "." if prefix else ""}{close[0]}"?'
    return f" - allowed here: {', '.join(allowed)}"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as `RegistryConfig | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
