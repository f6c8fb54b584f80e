"""Where each point ran, and what that means for its energy figures. Pure functions; no ray, no mlflow.

A Ray task records its node, the GPUs Ray gave it (CUDA_VISIBLE_DEVICES) and
their UUIDs. After the study, points that ran on one node at the same time
are flagged: CodeCarbon's CPU and RAM energy covers the whole host, so each of
those points' host energy includes the others' work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SHARED_HOST_WARNING = "llem.warning.shared_host"
HOST_SHARED_TAG = "llem.energy.host_shared"


@dataclass(frozen=True)
class TaskPlacement:
    node_id: str
    node_ip: str
    hostname: str
    task_id: str
    gpu_ids: str | None  # CUDA_VISIBLE_DEVICES as Ray set it; None: the point has no GPU
    gpu_uuids: str | None  # comma-separated, or "unavailable: why"; None: the point has no GPU

    def tags(self) -> dict[str, str]:
        tags = {
            "llem.ray.node_id": self.node_id,
            "llem.ray.node_ip": self.node_ip,
            "llem.ray.hostname": self.hostname,
            "llem.ray.task_id": self.task_id,
        }
        if self.gpu_ids is not None:
            tags["llem.ray.gpu_ids"] = self.gpu_ids
        if self.gpu_uuids is not None:
            tags["llem.ray.gpu_uuids"] = self.gpu_uuids
        return tags


@dataclass(frozen=True)
class Span:
    """One point's process: which run, on which node, from when to when (wall clock, s)."""

    run_id: str
    node_id: str
    start_s: float
    end_s: float


def gpu_uuids(cuda_visible_devices: str, lib: Any | None = None) -> str:
    """The UUIDs of the GPUs an id list names (NVML, PCI order), or 'unavailable: why'."""
    from llem_mlflow.energy.devices import resolve_entry, visible_entries
    from llem_mlflow.energy.nvml import NvmlError, open_nvml, read_boards

    try:
        nvml = open_nvml(lib)
    except NvmlError as exc:
        return f"unavailable: {exc}"
    try:
        uuids = [board.uuid for board in read_boards(nvml)]  # NVML (PCI) order
        found = []
        for entry in visible_entries(cuda_visible_devices, len(uuids)):
            index, why = resolve_entry(entry, uuids)
            if index is None:
                return f"unavailable: {why}"
            found.append(uuids[index])
        return ",".join(found) if found else "unavailable: CUDA_VISIBLE_DEVICES names no GPU"
    except NvmlError as exc:
        return f"unavailable: {exc}"
    finally:
        nvml.optional("nvmlShutdown")


def overlap(a: Span, b: Span) -> bool:
    return a.start_s < b.end_s and b.start_s < a.end_s


def host_sharing(spans: list[Span]) -> dict[str, list[str]]:
    """run id -> the runs that ran on its node at the same time (an empty list: it had the node's host to itself)."""
    return {
        a.run_id: [b.run_id for b in spans if b.run_id != a.run_id and b.node_id == a.node_id and overlap(a, b)]
        for a in spans
    }


def host_tags(others: list[str]) -> dict[str, str]:
    """Tags for one point, given the runs that shared its node's host."""
    if not others:
        return {HOST_SHARED_TAG: "false"}
    return {
        HOST_SHARED_TAG: "true",
        SHARED_HOST_WARNING: (
            f"{len(others)} other point(s) ran on this node at the same time (runs {', '.join(others)}): "
            "CPU and RAM energy (energy/cpu_j, energy/ram_j, and so energy/total_j and energy/j_per_output_token) "
            "cover the whole host, so they include that work (the point's GPUs were its own). "
            "For publishable CPU+GPU totals use placement: node_exclusive"
        ),
    }


def peak_concurrency(spans: list[Span]) -> int:
    """The most points that ran at the same time."""
    events = sorted([(s.start_s, 1) for s in spans] + [(s.end_s, -1) for s in spans])  # an end sorts before a start at the same time
    peak = running = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def point_slots(nodes: list[dict[str, float]], request: dict[str, float]) -> int:
    """How many points the nodes fit at once, given each node's total resources and one point's request."""
    total = 0
    for resources in nodes:
        fits = [math.floor(resources.get(name, 0.0) / amount + 1e-9) for name, amount in request.items() if amount > 0]
        total += min(fits) if fits else 0
    return total
