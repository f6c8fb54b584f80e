"""The machine's GPUs as the measuring code sees them: one small interface, one real implementation.

`Hardware` is the injection point that lets the whole pipeline run against a fake GPU on a CPU
machine (tests/fakegpu): the NVML library, the CUDA devices of this process with their UUIDs,
the devices the model's weights occupy, and a synchronize over a list of devices.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from llem_mlflow.energy.devices import CudaDevice


class Hardware(Protocol):
    def nvml_library(self) -> Any:
        """The NVML binding (the pynvml module's calls); None: import pynvml."""

    def cuda_devices(self) -> list[CudaDevice] | None:
        """Every CUDA device of this process in CUDA's order, with its UUID; None: no CUDA here."""

    def model_devices(self, loaded: Any) -> list[int]:
        """CUDA indices that hold the loaded model's weights ([] on CPU)."""

    def synchronize(self, devices: Sequence[int]) -> None:
        """Wait until the work queued on each of these CUDA devices is done."""


class TorchCuda:
    """The real machine: pynvml, and torch's view of CUDA."""

    def nvml_library(self) -> Any:
        return None

    def cuda_devices(self) -> list[CudaDevice] | None:
        import torch

        if not torch.cuda.is_available():
            return None
        # torch reports the UUID CUDA gives (cudaDeviceProp.uuid), which follows CUDA_VISIBLE_DEVICES
        # and CUDA_DEVICE_ORDER; NVML's order is PCI order. The UUID is what both agree on.
        return [CudaDevice(i, str(torch.cuda.get_device_properties(i).uuid)) for i in range(torch.cuda.device_count())]

    def model_devices(self, loaded: Any) -> list[int]:
        return list(loaded.gpu_indices)

    def synchronize(self, devices: Sequence[int]) -> None:
        synchronize(devices)


def synchronize(devices: Sequence[int] | None = None) -> None:
    """Wait for queued CUDA work on each device (None: the current one), so a timestamp or energy
    reading covers it; nothing on CPU, and never a new CUDA context."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if devices is None:
            torch.cuda.synchronize()
        for index in devices or ():
            torch.cuda.synchronize(index)


def gpu_memory_metrics(loaded) -> dict[str, float]:
    """The model's own size on its GPUs (GPU runs only; the peaks per phase are bench/memory.py's)."""
    if not loaded.gpu_indices or not hasattr(loaded.model, "get_memory_footprint"):
        return {}
    model_bytes = loaded.model.get_memory_footprint()
    return {"memory/gpu_model_mb": model_bytes / (1024.0 * 1024.0)} if model_bytes else {}
