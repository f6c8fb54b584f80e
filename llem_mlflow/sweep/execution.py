"""Where a study's points run: the `execution:` section of a study file, and its guards.

    execution:
      executor: ray              # local (default): one point after another in this process's machine
      ray_address: auto          # ray only; none: start a local Ray instance (loopback only)
      gpus_per_point: 1          # whole GPUs per point (0: no GPU; a fraction is refused)
      cpus_per_point: 1          # Ray CPUs reserved per point
      max_concurrent: 4          # at most this many points at once (default: as many as the cluster fits)
      placement: gpu_exclusive   # gpu_exclusive | node_exclusive (a whole node per point)

The CLI options `--executor`, `--ray-address`, `--gpus-per-point` and
`--max-concurrent` replace the file's values. Execution does not change what
a point measures, so it is not part of the study hash: a study started
locally can be resumed on Ray and the other way round. Nothing here imports ray.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from llem_mlflow.errors import ConfigError

EXECUTORS = ("local", "ray")
PLACEMENTS = ("gpu_exclusive", "node_exclusive")
EXECUTION_KEYS = ("executor", "ray_address", "gpus_per_point", "cpus_per_point", "max_concurrent", "placement")
# The custom resource each Ray node offers once (`ray start --resources='{"llem_node": 1}'`):
# a point that asks for it has the node to itself.
NODE_RESOURCE = "llem_node"
LOCAL_ADDRESSES = (None, "", "local")


@dataclass(frozen=True)
class Execution:
    executor: str = "local"
    ray_address: str | None = None  # None: start a local Ray instance (or use RAY_ADDRESS, like ray.init())
    gpus_per_point: int = 1
    cpus_per_point: float = 1.0
    max_concurrent: int | None = None  # None: as many points as the cluster fits at once
    placement: str = "gpu_exclusive"

    def describe(self) -> str:
        """One line for the plan."""
        if self.executor == "local":
            return "executor local: one point at a time on this machine"
        limit = f"at most {self.max_concurrent} at once" if self.max_concurrent else "as many at once as the cluster fits"
        return (
            f"executor ray ({self.ray_address or 'local instance'}): {self.gpus_per_point} GPU(s) and "
            f"{_number(self.cpus_per_point)} CPU(s) per point, {limit}, {self.placement}"
        )

    def tags(self) -> dict[str, str]:
        """What the study's parent records about how its points ran."""
        tags = {"llem.sweep.executor": self.executor}
        if self.executor == "ray":
            tags.update(
                {
                    "llem.sweep.ray_address": _without_userinfo(self.ray_address) or "local",
                    "llem.sweep.placement": self.placement,
                    "llem.sweep.gpus_per_point": str(self.gpus_per_point),
                    "llem.sweep.cpus_per_point": _number(self.cpus_per_point),
                    "llem.sweep.max_concurrent": str(self.max_concurrent) if self.max_concurrent else "unlimited",
                }
            )
        return tags


def read_execution(data: Any, source: str) -> Execution:
    """The `execution:` section of a study file (absent: the local executor)."""
    if data is None:
        return Execution()
    where = f"{source}: execution"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping such as {{executor: ray, gpus_per_point: 1}}, got {data!r}")
    unknown = [k for k in data if k not in EXECUTION_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(EXECUTION_KEYS)}")
    return _checked(Execution(**data), where)


def with_options(
    execution: Execution,
    executor: str | None = None,
    ray_address: str | None = None,
    gpus_per_point: str | None = None,
    max_concurrent: str | None = None,
) -> Execution:
    """The study's execution with the CLI's options applied ('' means: keep the file's value, for MLproject)."""
    changes: dict[str, Any] = {}
    if executor:
        changes["executor"] = executor
    if ray_address:
        changes["ray_address"] = ray_address
    if gpus_per_point:
        changes["gpus_per_point"] = _parse_number(gpus_per_point, "--gpus-per-point")
    if max_concurrent:
        changes["max_concurrent"] = _parse_number(max_concurrent, "--max-concurrent")
    merged = _checked(replace(execution, **changes), "options") if changes else execution
    ray_only = [o for o, v in (("--ray-address", ray_address), ("--gpus-per-point", gpus_per_point), ("--max-concurrent", max_concurrent)) if v]
    if ray_only and merged.executor != "ray":
        raise ConfigError(f"{ray_only[0]} applies to the Ray executor only: add --executor ray (or execution.executor: ray)")
    return merged


def _checked(execution: Execution, where: str) -> Execution:
    e = execution
    if e.executor not in EXECUTORS:
        raise ConfigError(f"{where}: executor is {e.executor!r}; allowed: {', '.join(EXECUTORS)}")
    if e.placement not in PLACEMENTS:
        raise ConfigError(f"{where}: placement is {e.placement!r}; allowed: {', '.join(PLACEMENTS)}")
    if e.ray_address is not None and not isinstance(e.ray_address, str):
        raise ConfigError(f"{where}: ray_address must be a string such as auto or ray://head:10001, got {e.ray_address!r}")
    gpus = e.gpus_per_point
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0 or not math.isfinite(gpus):
        raise ConfigError(f"{where}: gpus_per_point must be a whole number of GPUs >= 0, got {gpus!r}")
    if gpus != int(gpus):
        raise ConfigError(
            f"{where}: gpus_per_point is {gpus}: a point gets whole GPUs only. Two points on one GPU share its "
            "energy counter, so neither energy figure would be the point's own; give 0, 1, 2, ..."
        )
    cpus = e.cpus_per_point
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0 or not math.isfinite(cpus):
        raise ConfigError(f"{where}: cpus_per_point must be a number > 0, got {cpus!r}")
    limit = e.max_concurrent
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit != int(limit) or limit < 1):
        raise ConfigError(f"{where}: max_concurrent must be a whole number >= 1, got {limit!r}")
    return replace(e, gpus_per_point=int(gpus), cpus_per_point=float(cpus), max_concurrent=None if limit is None else int(limit))


def _parse_number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{option} must be a number, got {text!r}") from None


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


# --- guards ------------------------------------------------------------------------


def is_local_address(address: str | None) -> bool:
    """True when the Ray cluster can only be on this machine: a new local instance or a loopback head.

    `auto` and any other host may reach other machines, whose workers cannot open this machine's files.
    """
    if address in LOCAL_ADDRESSES:
        return True
    host = urlsplit(address if "://" in address else f"ray://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_tracking(uri: str) -> bool:
    """A tracking URI that names files on this machine (sqlite, file:, a plain path)."""
    if uri.split(":", 1)[0].lower() in ("databricks", "databricks-uc"):  # a workspace profile, not a path
        return False
    scheme = urlsplit(uri).scheme.lower()
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # a Windows drive letter is a path too


def check_tracking_reachable(execution: Execution, tracking_uri: str, env_address: str | None) -> None:
    """Refuse a store in this machine's files when the points may run on other machines."""
    if execution.executor != "ray":
        return
    address = execution.ray_address or env_address
    if is_local_address(address) or not is_local_tracking(tracking_uri):
        return
    raise ConfigError(
        f"the tracking URI {tracking_uri!r} is a file on this machine, but the points run on the Ray cluster at "
        f"{_without_userinfo(address)!r}, whose workers cannot write to it. Start a tracking server that every node "
        "can reach, e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --host 0.0.0.0 --port 5000`, "
        "and set MLFLOW_TRACKING_URI=http://<this host>:5000 (see docs/scaling.md)"
    )


def _without_userinfo(address: str | None) -> str | None:
    if not address or "@" not in address:
        return address
    parts = urlsplit(address)
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
