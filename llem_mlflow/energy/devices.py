"""Which physical GPUs the model runs on: CUDA devices matched to NVML boards by UUID.

Pure functions over strings, so they are tested without a GPU. CUDA indices (cuda:0,
cuda:1 ...) count the devices this process sees, in CUDA's order (CUDA_VISIBLE_DEVICES,
CUDA_DEVICE_ORDER); NVML indices count every board on the machine in PCI order. The two orders
differ on machines with mixed boards (CUDA's default order is fastest first), so we match by
UUID, as CUDA reports it, to the board's UUID (or one of its MIG instances') in NVML. We
measure by NVML index and report by CUDA index.

Without CUDA in this process (no torch CUDA build, or a test with a fake NVML), the fallback
reads CUDA_VISIBLE_DEVICES over NVML's order: exact only with CUDA_DEVICE_ORDER=PCI_BUS_ID or
identical boards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# device_map values that spread the model over every visible GPU (accelerate's names).
_ALL_VISIBLE = {"auto", "balanced", "balanced_low_0", "sequential"}
_CUDA_N = re.compile(r"^cuda(?::(\d+))?$")


@dataclass(frozen=True)
class GpuTarget:
    cuda_index: int  # i in energy/gpu<i>_j and timeline/gpu<i>_*
    nvml_index: int
    uuid: str  # the board's UUID in NVML
    mig_instances: tuple[str, ...] = ()  # a MIG board used whole: every instance belongs to this run


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device of this process: its ordinal and its UUID as CUDA reports it."""

    index: int
    uuid: str


@dataclass(frozen=True)
class NvmlBoard:
    """One board as NVML sees it."""

    nvml_index: int
    uuid: str
    pci_bus_id: str | None = None
    mig_uuids: tuple[str, ...] = ()  # its MIG instances (empty: MIG off)


def uuid_key(uuid: str) -> str:
    """The comparable part of a UUID: torch prints 8-4-4-4-12 hex; NVML prefixes GPU- or MIG-."""
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        text = text.removeprefix(prefix)
    return text


def wanted_cuda_indices(device_map: str | None, n_visible: int, processes: int = 1) -> tuple[list[int], str | None]:
    """CUDA indices the config puts the model on (with `processes` > 1, data parallel: process i on
    cuda:i), or ([], why none)."""
    if n_visible == 0:
        return [], "no CUDA device is visible (CUDA_VISIBLE_DEVICES hides them all)"
    if processes > 1 and device_map in (None, "cuda"):
        if processes > n_visible:
            return [], f"pytorch.num_processes {processes} needs {processes} GPUs, {n_visible} visible"
        return list(range(processes)), None
    if device_map is None:  # the loader's default: one CUDA device if present
        return [0], None
    if device_map in _ALL_VISIBLE:
        return list(range(n_visible)), None
    match = _CUDA_N.match(device_map)
    if match:
        index = int(match.group(1) or 0)
        if index < n_visible:
            return [index], None
        return [], f"pytorch.device_map {device_map!r} names a GPU that is not visible ({n_visible} visible)"
    return [], f"pytorch.device_map {device_map!r} puts the model on no GPU"


def match_by_uuid(devices: list[CudaDevice], boards: list[NvmlBoard]) -> tuple[list[GpuTarget], str | None]:
    """The board to measure for each CUDA device, or ([], why GPU energy cannot be measured).

    A MIG board's counter and power cover all its instances, so it is measured only when every
    one of its instances is a device of this run (then once, under the lowest CUDA index).
    """
    owner: dict[str, tuple[NvmlBoard, str | None]] = {}
    for board in boards:
        owner[uuid_key(board.uuid)] = (board, None)
        for mig in board.mig_uuids:
            owner[uuid_key(mig)] = (board, mig)
    targets: list[GpuTarget] = []
    used_instances: dict[int, list[tuple[int, str]]] = {}  # nvml index -> [(cuda index, MIG uuid)]
    for device in devices:
        hit = owner.get(uuid_key(device.uuid))
        if hit is None:
            return [], f"cuda:{device.index} (UUID {device.uuid}) matches no GPU that NVML sees"
        board, mig = hit
        if mig is not None:
            used_instances.setdefault(board.nvml_index, []).append((device.index, mig))
        elif board.mig_uuids:
            return [], f"cuda:{device.index} is board {board.uuid}, whose MIG mode is on: NVML measures it only as a whole"
        else:
            targets.append(GpuTarget(device.index, board.nvml_index, board.uuid))
    for nvml_index, used in used_instances.items():
        board = boards[[b.nvml_index for b in boards].index(nvml_index)]
        others = sorted(set(board.mig_uuids) - {mig for _, mig in used})
        if others:
            first = min(used)
            return [], (
                f"cuda:{first[0]} is MIG instance {first[1]} of GPU {board.uuid}, which has {len(board.mig_uuids)} "
                f"MIG instance(s) of which this run uses {len(used)}: NVML's energy counter and power cover the whole "
                "board, so they would count the other instances' work"
            )
        targets.append(GpuTarget(min(used)[0], nvml_index, board.uuid, mig_instances=tuple(board.mig_uuids)))
    return sorted(targets, key=lambda t: t.cuda_index), None


# --- fallback without CUDA in this process: CUDA_VISIBLE_DEVICES over NVML's order -----------


def visible_entries(cuda_visible_devices: str | None, n_physical: int) -> list[str]:
    """The visible devices as CUDA reads the variable: unset -> all; parsing stops at the first bad entry."""
    if cuda_visible_devices is None:
        return [str(i) for i in range(n_physical)]
    entries = []
    for raw in cuda_visible_devices.split(","):
        entry = raw.strip()
        if entry.isdigit() or entry.startswith(("GPU-", "MIG-")):
            entries.append(entry)
        else:  # "", "-1", garbage: CUDA ignores this entry and everything after it
            break
    return entries


def resolve_entry(entry: str, uuids: list[str]) -> tuple[int | None, str | None]:
    """(NVML index, None) for one CUDA_VISIBLE_DEVICES entry, or (None, why not)."""
    if entry.startswith("MIG-"):
        return None, f"{entry} is a MIG instance: NVML reports no energy counter or power per MIG instance"
    if entry.isdigit():
        index = int(entry)
        if index < len(uuids):
            return index, None
        return None, f"CUDA_VISIBLE_DEVICES names GPU {index} but NVML sees {len(uuids)} GPU(s)"
    matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]  # CUDA accepts unique prefixes
    if len(matches) == 1:
        return matches[0], None
    return None, f"CUDA_VISIBLE_DEVICES entry {entry} matches {len(matches)} GPU UUIDs"


def targets_from_environment(
    cuda_indices: list[int], cuda_visible_devices: str | None, uuids: list[str]
) -> tuple[list[GpuTarget], str | None]:
    """The boards behind these CUDA indices, read from CUDA_VISIBLE_DEVICES over NVML's order."""
    entries = visible_entries(cuda_visible_devices, len(uuids))
    targets = []
    for cuda_index in cuda_indices:
        if cuda_index >= len(entries):
            return [], f"cuda:{cuda_index} is not among the {len(entries)} visible device(s)"
        nvml_index, why = resolve_entry(entries[cuda_index], uuids)
        if nvml_index is None:
            return [], why
        targets.append(GpuTarget(cuda_index=cuda_index, nvml_index=nvml_index, uuid=uuids[nvml_index]))
    return targets, None


def select_gpus(
    device_map: str | None, cuda_visible_devices: str | None, uuids: list[str], processes: int = 1
) -> tuple[list[GpuTarget], str | None]:
    """The fallback's GPUs to measure for a device_map, given every GPU's UUID by NVML index."""
    wanted, reason = wanted_cuda_indices(device_map, len(visible_entries(cuda_visible_devices, len(uuids))), processes)
    if reason:
        return [], reason
    return targets_from_environment(wanted, cuda_visible_devices, uuids)
