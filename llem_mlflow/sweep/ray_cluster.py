"""Connecting to the Ray cluster a study runs on, and checking that it can run a point at all.

Without an address (and without RAY_ADDRESS) a local Ray instance is started
for the study and stopped after it. It listens on the loopback interface only
and has no dashboard: a laptop study opens nothing to the network.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llem_mlflow.errors import ConfigError
from llem_mlflow.sweep.execution import NODE_RESOURCE, Execution
from llem_mlflow.sweep.placement import point_slots

# Ray reads this when it is imported: off, a local instance takes 127.0.0.1 as its node address, and its
# servers then listen on loopback only (its documented switch for single-machine Windows/macOS use).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class Cluster:
    address: str  # what the driver connected to
    started_here: bool  # a local instance this study started (and stops)
    snapshot: dict[str, Any]  # resources and nodes, for the parent's artifact
    slots: int  # points the cluster fits at once (before max_concurrent)


def point_request(execution: Execution) -> dict[str, float]:
    """The Ray resources one point asks for."""
    request = {"CPU": execution.cpus_per_point, "GPU": float(execution.gpus_per_point)}
    if execution.placement == "node_exclusive":
        request[NODE_RESOURCE] = 1.0
    return request


@contextlib.contextmanager
def connected(execution: Execution, echo: Callable[[str], None], quiet: bool) -> Iterator[Cluster]:
    """Ray initialised for the study (a running one in this process is used as it is); checked to fit a point."""
    address = execution.ray_address or None
    start_local = address == "local" or (address is None and not os.environ.get("RAY_ADDRESS"))
    if start_local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_SWITCH, "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(
            'executor ray needs the ray package: pip install "llem-mlflow[ray]" (or pip install "ray>=2.50,<3")'
        ) from None

    initialised_here = False
    if not ray.is_initialized():
        common = {"log_to_driver": not quiet, "logging_level": "WARNING"}
        if start_local:
            echo("starting a local Ray instance (loopback only, no dashboard)")
            ray.init(
                address="local",
                resources={NODE_RESOURCE: 1},
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                **common,
            )
        else:
            echo(f"connecting to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}")
            try:
                ray.init(address=address, **common)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
        initialised_here = True
    try:
        cluster = describe_cluster(ray, execution, started_here=initialised_here and start_local)
        yield cluster
    finally:
        if initialised_here:
            ray.shutdown()


def describe_cluster(ray: Any, execution: Execution, started_here: bool) -> Cluster:
    """The cluster's resources; ConfigError when no node can ever run a point."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    snapshot = {
        "address": ray.get_runtime_context().gcs_address,
        "cluster_resources": ray.cluster_resources(),
        "available_resources": ray.available_resources(),
        "nodes": [
            {
                "node_id": n["NodeID"],
                "ip": n.get("NodeManagerAddress"),
                "hostname": n.get("NodeManagerHostname"),
                "resources": n.get("Resources", {}),
            }
            for n in nodes
        ],
    }
    request = point_request(execution)
    slots = point_slots([n.get("Resources", {}) for n in nodes], request)
    if slots == 0:
        raise ConfigError(no_fit_message(request, [n.get("Resources", {}) for n in nodes]))
    return Cluster(snapshot["address"], started_here, snapshot, slots)


def no_fit_message(request: dict[str, float], nodes: list[dict[str, float]]) -> str:
    wanted = ", ".join(f"{_n(v)} {k}" for k, v in request.items() if v > 0)
    offered = "; ".join(
        ", ".join(f"{_n(r.get(k, 0))} {k}" for k in request if request[k] > 0) for r in nodes
    ) or "no alive node"
    message = f"no node of the Ray cluster can run a point: a point needs {wanted}; the nodes offer: {offered}."
    if request.get(NODE_RESOURCE) and not any(r.get(NODE_RESOURCE) for r in nodes):
        message += (
            f" placement node_exclusive needs the custom resource {NODE_RESOURCE} (1 per node): start each node with "
            f"`ray start ... --resources='{{\"{NODE_RESOURCE}\": 1}}'` (docs/scaling.md)."
        )
    elif request.get("GPU") and not any(r.get("GPU") for r in nodes):
        message += " The cluster has no GPU: set execution.gpus_per_point: 0 (or --gpus-per-point 0) to run points on CPUs."
    else:
        message += " Lower execution.gpus_per_point / cpus_per_point, or add a larger node."
    return message


def _n(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
