"""The study file: a base experiment, a grid and/or explicit points, and the run order.

    base: {model: "random:tiny", ...}      # or  base_config: path/to/exp.yaml
    sweep:                                 # dotted keys -> lists: the Cartesian product
      pytorch.batch_size: [1, 8]
      precision: [fp32, bf16]
    experiments:                           # optional explicit points (override mappings)
      - {name: greedy, decoder.preset: deterministic}
    cycle_order: interleaved               # sequential | interleaved | shuffled
    repeats: 2                             # runs per point
    seed: 0                                # order of `shuffled`
    execution: {executor: ray, max_concurrent: 4}   # where points run (sweep/execution.py)

Each point is validated as a full experiment config; an invalid one is
skipped with its reason, and the plan (points and skips) is known before
anything runs. A bad study file raises ConfigError naming the key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llem_mlflow.config.loader import (
    _section_model,
    parse_text,
    read_mapping,
    validate_config,
)
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.config.params import config_hash
from llem_mlflow.errors import ConfigError
from llem_mlflow.sweep.execution import Execution, read_execution

STUDY_KEYS = ("name", "base", "base_config", "sweep", "experiments", "cycle_order", "repeats", "seed", "execution")
CYCLE_ORDERS = ("sequential", "interleaved", "shuffled")
MAX_POINTS = 10_000  # a grid this large is a typo, not a study
MAX_NAME_LENGTH = 120


@dataclass(frozen=True)
class Point:
    """One valid experiment of the study."""

    name: str
    overrides: dict[str, Any]  # dotted key -> value, what this point changes on the base
    config: ExperimentConfig
    config_hash: str


@dataclass(frozen=True)
class SkippedPoint:
    name: str
    overrides: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Study:
    name: str
    source: str
    swept: dict[str, list[Any]]  # the grid as written
    points: list[Point]
    skipped: list[SkippedPoint]
    cycle_order: str
    repeats: int
    seed: int
    study_hash: str = field(default="")
    execution: Execution = field(default_factory=Execution)  # how points run; not part of the study's identity

    def schedule(self, done: dict[str, int] | None = None) -> list[tuple[Point, int]]:
        """(point, repeat) pairs in run order; `done` maps config hash -> finished runs to leave out."""
        return schedule(self.points, self.repeats, self.cycle_order, self.seed, done or {})


def load_study(path: str | Path) -> Study:
    """Read, expand and validate a study file."""
    path = Path(path)
    data = read_mapping(path)
    return build_study(data, source=str(path), base_dir=path.parent)


def looks_like_study(data: dict[str, Any]) -> bool:
    """A study file, not an experiment config: it has a study's own keys (`llem-mlflow validate` asks)."""
    return any(key in data for key in ("sweep", "experiments", "base", "base_config"))


class _Problems:
    """Every problem of a study file, reported at once (each part is read even when another is wrong)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[str] = []

    @contextmanager
    def each(self) -> Iterator[None]:
        """Record a ConfigError raised inside and carry on with the next part."""
        try:
            yield
        except ConfigError as exc:
            self.found.append(str(exc).removeprefix(f"{self.source}: "))

    def raise_if_any(self) -> None:
        if len(self.found) == 1:
            raise ConfigError(f"{self.source}: {self.found[0]}")
        if self.found:
            listed = "\n".join(f"  - {problem}" for problem in self.found)
            raise ConfigError(f"{self.source}: {len(self.found)} problems in the study file:\n{listed}")


def build_study(data: dict[str, Any], source: str, base_dir: Path = Path(".")) -> Study:
    """Expand a parsed study mapping into points (valid) and skipped points (with reasons)."""
    problems = _Problems(source)
    for key in (k for k in data if k not in STUDY_KEYS):
        with problems.each():
            raise ConfigError(f"{source}: unknown study key {key!r}{_suggest(str(key), STUDY_KEYS)}")
    base: dict[str, Any] = {}
    swept: dict[str, list[Any]] = {}
    explicit: list[tuple[str | None, dict[str, Any]]] = []
    with problems.each():
        base = _read_base(data, source, base_dir)
    known = len(problems.found)
    with problems.each():
        swept = _read_sweep(data.get("sweep"), source, problems)
    with problems.each():
        explicit = _read_experiments(data.get("experiments"), source, problems)
    if not swept and not explicit and len(problems.found) == known:  # empty, not wrong (that is recorded)
        problems.found.append("a study needs `sweep:` (dotted keys -> lists) or `experiments:` (a list of overrides)")
    cycle_order = data.get("cycle_order", "sequential")
    if cycle_order not in CYCLE_ORDERS:
        problems.found.append(f"cycle_order is {cycle_order!r}; allowed: {', '.join(CYCLE_ORDERS)}")
    repeats, seed = 1, 0
    with problems.each():
        repeats = _positive_int(data.get("repeats", 1), "repeats", source, minimum=1)
    with problems.each():
        seed = _positive_int(data.get("seed", 0), "seed", source, minimum=0)
    execution = Execution()
    with problems.each():
        execution = read_execution(data.get("execution"), source)
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        problems.found.append(f"name must be a non-empty string, got {name!r}")
    problems.raise_if_any()

    candidates = [(grid_point_name(combo, swept), combo) for combo in expand_grid(swept)]
    for i, (label, overrides) in enumerate(explicit, start=1):
        candidates.append((label or f"exp{i}:" + _describe(overrides), overrides))

    points: list[Point] = []
    skipped: list[SkippedPoint] = []
    seen: dict[str, str] = {}
    for label, overrides in candidates:
        label = label[:MAX_NAME_LENGTH]
        try:
            cfg = validate_config(apply_point(base, overrides), source=f"point {label}")
        except ConfigError as exc:
            skipped.append(SkippedPoint(label, overrides, _one_line(str(exc), f"point {label}: ")))
            continue
        digest = config_hash(cfg)
        if digest in seen:
            skipped.append(SkippedPoint(label, overrides, f"same measured config as point {seen[digest]}"))
            continue
        seen[digest] = label
        points.append(Point(label, overrides, cfg, digest))
    if not points:
        reasons = "\n".join(f"  - {s.name}: {s.reason}" for s in skipped)
        raise ConfigError(f"{source}: no valid point in the study; every point was skipped:\n{reasons}")
    return Study(
        name=name.strip(),
        source=source,
        swept=swept,
        points=points,
        skipped=skipped,
        cycle_order=cycle_order,
        repeats=repeats,
        seed=seed,
        study_hash=study_hash(points),
        execution=execution,
    )


def study_hash(points: list[Point]) -> str:
    """Identity of a study: the set of measured configs (order, repeats and names do not count)."""
    text = json.dumps(sorted(p.config_hash for p in points))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand_grid(swept: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the swept lists, the first key varying slowest."""
    if not swept:
        return []
    keys = list(swept)
    return [dict(zip(keys, values)) for values in itertools.product(*(swept[k] for k in keys))]


def grid_point_name(combo: dict[str, Any], swept: dict[str, list[Any]]) -> str:
    """Short run name from the swept values: leaf names where they are unique (`batch_size=8,precision=bf16`)."""
    leaves = [k.rsplit(".", 1)[-1] for k in swept]
    parts = []
    for key, value in combo.items():
        leaf = key.rsplit(".", 1)[-1]
        parts.append(f"{leaf if leaves.count(leaf) == 1 else key}={_short(value)}")
    return ",".join(parts)


def apply_point(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the base with the point's overrides applied (dotted keys or nested sections)."""
    data = copy.deepcopy(base)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"{'.'.join(parents[: i + 1])} is not a section, it holds {node[part]!r}")
            node = node[part]
        current = node.get(leaf)
        if isinstance(value, dict) and isinstance(current, dict):
            node[leaf] = _merged(current, value)  # a section written as a mapping changes only its keys
        else:
            node[leaf] = copy.deepcopy(value)
    return data


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def schedule(
    points: list[Point], repeats: int, cycle_order: str, seed: int, done: dict[str, int]
) -> list[tuple[Point, int]]:
    """Run order. sequential: all repeats of a point, then the next point.
    interleaved: one round over every point per repeat (spreads thermal drift evenly).
    shuffled: interleaved rounds, each in a seeded random order.
    Repeats already finished (`done`, by config hash) are left out.
    """
    if cycle_order == "sequential":
        pairs = [(p, r) for p in points for r in range(1, repeats + 1)]
    else:
        pairs = []
        rng = random.Random(seed)
        for repeat in range(1, repeats + 1):
            order = list(points)
            if cycle_order == "shuffled":
                rng.shuffle(order)
            pairs += [(p, repeat) for p in order]
    remaining = dict(done)
    out = []
    for point, repeat in pairs:
        if remaining.get(point.config_hash, 0) > 0:
            remaining[point.config_hash] -= 1
            continue
        out.append((point, repeat))
    return out


# --- reading the parts of the study file ---------------------------------------


def _read_base(data: dict[str, Any], source: str, base_dir: Path) -> dict[str, Any]:
    if "base" in data and "base_config" in data:
        raise ConfigError(f"{source}: give either base (a mapping) or base_config (a path), not both")
    if "base" in data:
        base = data["base"]
        if not isinstance(base, dict):
            raise ConfigError(f"{source}: base must be a mapping of experiment fields, got {type(base).__name__}")
        return base
    if "base_config" in data:
        ref = data["base_config"]
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{source}: base_config must be a path to an experiment YAML, got {ref!r}")
        path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        return read_mapping(path)
    raise ConfigError(f"{source}: missing base (an experiment mapping) or base_config (a path to one)")


def _read_sweep(sweep: Any, source: str, problems: _Problems) -> dict[str, list[Any]]:
    if sweep is None:
        return {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"{source}: sweep must map dotted keys to lists, e.g. `pytorch.batch_size: [1, 8]`")
    out: dict[str, list[Any]] = {}
    for key, values in sweep.items():
        with problems.each():  # every key's problem, not only the first
            out[key] = _read_swept_values(key, values, f"{source}: sweep.{key}")
    if len(out) < len(sweep):
        return {}  # a key was wrong (recorded): no grid to count
    size = 1
    for values in out.values():
        size *= len(values)
    if size > MAX_POINTS:
        raise ConfigError(f"{source}: sweep expands to {size} points; at most {MAX_POINTS} are allowed")
    return out


def _read_swept_values(key: Any, values: Any, where: str) -> list[Any]:
    if not isinstance(key, str):
        raise ConfigError(f"{where}: keys must be dotted field names such as pytorch.batch_size")
    check_field_path(key, where)
    if isinstance(values, dict):
        raise ConfigError(f"{where}: use dotted keys (`{key}.field: [...]`), not a nested mapping")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: must be a non-empty list of values, e.g. [1, 8], got {values!r}")
    return values


def _read_experiments(experiments: Any, source: str, problems: _Problems) -> list[tuple[str | None, dict[str, Any]]]:
    if experiments is None:
        return []
    if not isinstance(experiments, list):
        raise ConfigError(f"{source}: experiments must be a list of override mappings")
    out = []
    for i, entry in enumerate(experiments, start=1):
        with problems.each():  # every entry's problem, not only the first
            out.append(_read_experiment(entry, f"{source}: experiments[{i}]"))
    return out


def _read_experiment(entry: Any, where: str) -> tuple[str | None, dict[str, Any]]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping of overrides, got {entry!r}")
    entry = dict(entry)
    label = entry.pop("name", None)
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ConfigError(f"{where}: name must be a non-empty string")
    overrides = {}
    for key, value in entry.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} must be a field name")
        check_field_path(key, f"{where}.{key}")
        overrides[key] = value
    return label.strip() if label else None, overrides


def check_field_path(key: str, where: str) -> None:
    """Refuse a dotted key that names no config field (a typo would otherwise skip every point)."""
    model: Any = ExperimentConfig
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"{where}: {key!r} is not a dotted field name")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(parts[:i])
            raise ConfigError(
                f"{where}: {key!r} is not a config field{_suggest(part, list(fields), prefix)}"
            )
        annotation = fields[part].annotation
        section = _section_model(annotation)
        if section is None:
            if i < len(parts) - 1 and "dict" not in str(annotation):
                raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is a value, not a section")
            return
        model = section


def _positive_int(value: Any, key: str, source: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{source}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _suggest(word: str, allowed: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    if close:
        return f' - did you mean "{prefix + "." if prefix else ""}{close[0]}"?'
    return f" - allowed: {', '.join(allowed)}"


def _one_line(message: str, prefix: str) -> str:
    """A validation message as one line: '1 problem(s) in the config:\n  - a: b' -> 'a: b'."""
    lines = [line.strip().removeprefix("- ") for line in message.removeprefix(prefix).splitlines()]
    if len(lines) > 1 and "problem(s) in the config" in lines[0]:
        lines = lines[1:]
    return "; ".join(line for line in lines if line)


def _short(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _describe(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in overrides.items()) or "base"


def parse_study_text(text: str, source: str = "study") -> Study:
    """Build a study from YAML text (tests and `--dry-run` on inline text)."""
    data = parse_text(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study file must hold a mapping (base:, sweep:, ...)")
    return build_study(data, source)
