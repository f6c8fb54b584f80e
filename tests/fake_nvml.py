"""The fake NVML used by the unit tests: pynvml's interface over fake boards (tests/fakegpu).

`FakeGpu` is the ideal board (a settable constant power, a continuous counter): for tests of
arithmetic and error paths. Realistic boards (counter steps, 1 s averaged power, noise, heat,
throttling, co-tenants, counter resets, MIG, CUDA/PCI order) come from fakegpu.Scenario.
"""

from __future__ import annotations

from fakegpu.ideal import IdealGpu as FakeGpu
from fakegpu.nvml import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    NVML_FI_DEV_POWER_INSTANT,
    FakeNvml,
    NVMLError,
    NVMLError_GpuIsLost,
    NVMLError_LibraryNotFound,
    NVMLError_NotSupported,
)

__all__ = [
    "NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_UNINITIALIZED",
    "NVML_FI_DEV_POWER_INSTANT", "FakeGpu", "FakeNvml", "NVMLError", "NVMLError_GpuIsLost",
    "NVMLError_LibraryNotFound", "NVMLError_NotSupported", "two_gpus",
]  # fmt: skip


def two_gpus(**kwargs) -> list[FakeGpu]:
    return [
        FakeGpu(uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000", pci_bus_id="00000000:18:00.0", power_w=100.0, **kwargs),
        FakeGpu(uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000", pci_bus_id="00000000:3B:00.0", power_w=200.0, **kwargs),
    ]
