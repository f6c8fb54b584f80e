"""Fuzzing the config loader: whatever a user writes, the answer is a validated
ExperimentConfig or our ConfigError (exit 2 with a message), never another exception.

Five generators: random text, random bytes, YAML trees built from the schema's own
field names with wrong types and huge values mixed in, random -o overrides on a valid
file, and YAML alias graphs (anchors referring to anchors, any width and depth). Plus fixed
pathological inputs (deep nesting, alias bombs, huge numbers, huge files).

Every load is bounded: it must end within TIME_BOUND_S (a hard alarm stops a hang) and
allocate at most MEMORY_BOUND_MB at its peak (tracemalloc), whatever the input.
"""

from __future__ import annotations

import math
import resource
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llem_mlflow.config.loader import load_config, validate_config
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.errors import ConfigError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Generous on a loaded machine: a valid config loads in milliseconds; the alias bomb of the issue
# spun for minutes and grew without end.
TIME_BOUND_S = 5.0
MEMORY_BOUND_MB = 200

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
SECTIONS = ["dataset", "decoder", "pytorch", "warmup", "baseline", "energy", "cooldown", "registry", "online", "slo"]

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


@contextmanager
def bounded(seconds: float = TIME_BOUND_S, megabytes: float = MEMORY_BOUND_MB):
    """Fail (never hang, never swap) when the block runs longer or needs more memory than allowed:
    an alarm interrupts it after `seconds`; on Linux its address space may grow by `megabytes` at
    most (RLIMIT_AS: an allocation beyond fails with MemoryError)."""

    def too_slow(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    limits = _limit_memory_growth(megabytes)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    except (TimeoutError, MemoryError) as exc:
        pytest.fail(f"unbounded: {type(exc).__name__}: {str(exc)[:200]}", pytrace=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if limits is not None:
            resource.setrlimit(resource.RLIMIT_AS, limits)
    assert time.monotonic() - started < seconds


def _limit_memory_growth(megabytes: float):
    """Lower the soft address-space limit to now + megabytes; returns the limits to restore (None: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import psutil

    limits = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = psutil.Process().memory_info().vms + int(megabytes * 1024 * 1024)
    if limits[1] != resource.RLIM_INFINITY:
        ceiling = min(ceiling, limits[1])
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, limits[1]))
    return limits


def _assert_config_or_clear_error(path: Path, overrides: tuple[str, ...] = ()) -> None:
    with bounded():
        _config_or_clear_error(path, overrides)


def _config_or_clear_error(path: Path, overrides: tuple[str, ...] = ()) -> None:
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


@st.composite
def alias_graphs(draw) -> str:
    """A config whose passthrough_kwargs hold anchors made of earlier anchors: `&aN [*a(N-1), ...]`,
    random width and depth (the deepest expand to width**depth values), sometimes under a mapping."""
    depth = draw(st.integers(1, 12))
    lines = ["model: random:tiny", "passthrough_kwargs:", "  a0: &a0 [x, 1, {k: v}]"]
    for level in range(1, depth + 1):
        width = draw(st.integers(1, 12))
        refs = [f"*a{draw(st.integers(0, level - 1))}" for _ in range(width)]
        body = f"[{', '.join(refs)}]" if draw(st.booleans()) else "{" + ", ".join(f"k{i}: {r}" for i, r in enumerate(refs)) + "}"
        lines.append(f"  a{level}: &a{level} {body}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=alias_graphs())
def test_alias_graphs_are_bounded(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    _assert_config_or_clear_error(path)


def _bomb(width: int, depth: int, under: str = "passthrough_kwargs") -> str:
    """The issue's alias bomb: width aliases of width aliases ... (width**depth leaves)."""
    lines = ["model: random:tiny", f"{under}:", f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  l{d}: &l{d} [{', '.join([f'*l{d - 1}'] * width)}]" for d in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, needle",
    [
        (_bomb(9, 8), "expands to more than 100000 values"),  # 9^8 = 43 million leaves
        (_bomb(9, 8, under="tags"), "expands to more than 100000 values"),
        (_bomb(2, 60), "expands to more than 100000 values"),  # narrow but deep: 2^60
        ("base: &b {model: random:tiny, tags: &t [*b]}", "refers to a node that contains it"),
    ],
    ids=["bomb-9x8", "bomb-in-tags", "bomb-2x60", "recursive"],
)
def test_alias_bombs_are_refused_at_once(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    with bounded(seconds=TIME_BOUND_S, megabytes=50), pytest.raises(ConfigError, match=needle) as error:
        load_config(path)
    assert "bomb.yaml" in str(error.value) and "aliases" in str(error.value) or "contains it" in str(error.value)


def test_a_huge_config_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("w") as f:  # 50 MB, the size from the issue
        f.write("model: random:tiny\ntags:\n")
        line = "  k{}: " + "v" * 80 + "\n"
        for i in range(50 * 1024 * 1024 // 90):
            f.write(line.format(i))
    with bounded(megabytes=20), pytest.raises(ConfigError, match=r"big.yaml.*larger than 1024 KiB"):
        load_config(path)


def test_a_bomb_in_an_override_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    bomb = "{a: &a [x,x,x,x,x,x,x,x,x,x], " + ", ".join(f"l{d}: &l{d} [" + ", ".join([f"*{'a' if d == 1 else f'l{d - 1}'}"] * 10) + "]" for d in range(1, 7)) + "}"
    with bounded(), pytest.raises(ConfigError, match="expands to more than"):
        load_config(path, (f"passthrough_kwargs.x={bomb}",))


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


def test_the_bounds_stop_what_exceeds_them() -> None:
    """The harness itself: a block that runs too long, or allocates too much, fails the test (no hang)."""
    with pytest.raises(pytest.fail.Exception, match="still running after 0.5 s"):
        with bounded(seconds=0.5):
            while True:
                pass
    if sys.platform.startswith("linux"):
        with pytest.raises(pytest.fail.Exception, match="MemoryError"):
            with bounded(megabytes=50):
                bytearray(500 * 1024 * 1024)
    with bounded(seconds=5, megabytes=50):
        bytearray(1024 * 1024)  # within bounds: passes
