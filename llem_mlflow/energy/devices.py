"""Which physical GPUs the model runs on: CUDA_VISIBLE_DEVICES x pytorch.device_map.

Pure functions over strings, so they are tested without a GPU. CUDA indices
(cuda:0, cuda:1 ...) count the visible devices; NVML indices count all
devices on the machine. We measure by NVML index and report by CUDA index.
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
    uuid: str


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


def wanted_cuda_indices(device_map: str | None, n_visible: int) -> tuple[list[int], str | None]:
    """CUDA indices the model uses, or ([], why none)."""
    if n_visible == 0:
        return [], "no CUDA device is visible (CUDA_VISIBLE_DEVICES hides them all)"
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


def select_gpus(device_map: str | None, cuda_visible_devices: str | None, uuids: list[str]) -> tuple[list[GpuTarget], str | None]:
    """The GPUs to measure, given every GPU's UUID by NVML index; or ([], the reason none can be)."""
    entries = visible_entries(cuda_visible_devices, len(uuids))
    wanted, reason = wanted_cuda_indices(device_map, len(entries))
    if reason:
        return [], reason
    targets = []
    for cuda_index in wanted:
        nvml_index, why = resolve_entry(entries[cuda_index], uuids)
        if nvml_index is None:
            return [], why
        targets.append(GpuTarget(cuda_index=cuda_index, nvml_index=nvml_index, uuid=uuids[nvml_index]))
    return targets, None
