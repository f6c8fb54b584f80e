"""Fuzzing the config loader: whatever a user writes, the answer is a validated
ExperimentConfig or our ConfigError (exit 2 with a message), never another exception.

Four generators: random text, random bytes, YAML trees built from the schema's own
field names with wrong types and huge values mixed in, and random -o overrides on a
valid file. Plus fixed pathological inputs (deep nesting, aliases, huge numbers).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llem_mlflow.config.loader import load_config, validate_config
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.errors import ConfigError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID = {
    "model": "random:tiny",
    "max_output_tokens": 8,
    "dataset": {"source": "builtin", "n": 4},
    "pytorch": {"batch_size": 2},
}


def _field_names() -> list[str]:
    """Every field name of every section (so generated keys often hit real fields)."""
    names: set[str] = set()
    for name, field in ExperimentConfig.model_fields.items():
        names.add(name)
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            names.update(getattr(arg, "model_fields", {}))
    return sorted(names)


FIELDS = _field_names()
SECTIONS = ["dataset", "decoder", "pytorch", "warmup", "baseline", "energy", "cooldown", "registry"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # beyond int64 and float range
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["None", "null", "auto", "cpu", "10GiB", "1e999", "random:tiny", "models:/x/1", "nf4", ""]),
)
keys = st.one_of(st.sampled_from(FIELDS + SECTIONS), st.text(max_size=12), st.integers(-3, 3))
trees = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


def _assert_config_or_clear_error(path: Path, overrides: tuple[str, ...] = ()) -> None:
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        message = str(exc)
        assert message.strip(), "a ConfigError must say something"
        assert "Traceback" not in message
        return
    assert isinstance(cfg, ExperimentConfig)


@FUZZ
@given(text=st.text(max_size=400))
def test_random_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    _assert_config_or_clear_error(path)


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    _assert_config_or_clear_error(path)


@FUZZ
@given(tree=trees)
def test_generated_yaml_trees(tmp_path: Path, tree: object) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    _assert_config_or_clear_error(path)


@FUZZ
@given(section=st.sampled_from(SECTIONS + [None]), field=st.sampled_from(FIELDS), value=trees)
def test_one_field_of_a_valid_config_set_to_anything(tmp_path: Path, section: str | None, field: str, value: object) -> None:
    """The deepest paths: a valid config with one known field given any value."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items()}
    target = data if section is None else data.setdefault(section, {})
    target[field] = value
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    _assert_config_or_clear_error(path)


@FUZZ
@given(overrides=st.lists(st.one_of(
    st.text(max_size=40),
    st.builds(lambda s, f, v: f"{s}.{f}={v}", st.sampled_from(SECTIONS), st.sampled_from(FIELDS), st.text(max_size=20)),
), max_size=3))  # fmt: skip
def test_random_overrides(tmp_path: Path, overrides: list[str]) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    _assert_config_or_clear_error(path, tuple(overrides))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 50_000,  # deeper than the parser's recursion
        "a: " + "{b: " * 3000 + "1" + "}" * 3000,
        "model: random:tiny\npassthrough_kwargs:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 400)) + "  " * 400 + "x: 1\n",
        "model: random:tiny\nmax_output_tokens: " + "9" * 5000,  # a 5000-digit integer
        "model: random:tiny\nrandom_seed: 1e999",
        "model: random:tiny\ndecoder: {temperature: .nan}",
        "model: random:tiny\npytorch: {max_memory: {0: 10GiB, 1.5: 1GiB}}",
        "model: random:tiny\npytorch: {max_memory: [1, 2]}",
        "model: random:tiny\npytorch: {max_memory: {cpu: 10}}",
        "a: &a [*a]",  # a self-referencing alias
        "x: &x {y: *x}",
        "model: 2024-01-01",  # YAML timestamp
        "? [a, b]\n: 1",  # a list as a mapping key
        "model: !!python/object/apply:os.system ['true']",  # safe_load must refuse it
        "\x00\x01\x02",
        "\ufeffmodel: random:tiny",  # a byte-order mark
        "model: random:tiny\n" + "tags: {" + ", ".join(f"k{i}: v" for i in range(5000)) + "}",
    ],
    ids=lambda t: repr(t[:25]),
)
def test_pathological_inputs(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    _assert_config_or_clear_error(path)


def test_fuzzing_can_tell_valid_from_invalid(tmp_path: Path) -> None:
    """The harness itself: a valid file validates, an invalid one is refused with its field named."""
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    assert load_config(path).pytorch.batch_size == 2
    with pytest.raises(ConfigError, match="pytorch.batch_size"):
        validate_config({**VALID, "pytorch": {"batch_size": math.inf}}, source="x")
