"""A fake NVML library: the calls of `pynvml` that llem_mlflow.energy uses, over simulated GPUs.

Only the hardware is fake. Each FakeGpu draws a settable constant power, and
its total-energy counter is the exact integral of that power over real time
(mJ), so a meter reading it over a real window must find power x duration.
`fail` makes any call raise an NVMLError with a given code, like the driver.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_FI_DEV_POWER_INSTANT = 186


class NVMLError(Exception):
    """Like pynvml.NVMLError: NVMLError(code) builds the subclass for that code; `.value` is the code."""

    _by_code: dict[int, type] = {}

    def __new__(cls, value: int):
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int):
        super().__init__(value)

    def __str__(self) -> str:
        return f"NVML error {self.value}"


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


NVMLError._by_code.update(
    {
        NVML_ERROR_NOT_SUPPORTED: NVMLError_NotSupported,
        NVML_ERROR_LIBRARY_NOT_FOUND: NVMLError_LibraryNotFound,
        NVML_ERROR_GPU_IS_LOST: NVMLError_GpuIsLost,
    }
)


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    power_w: float = 100.0  # instantaneous power; the energy counter integrates it
    average_power_w: float | None = None  # what nvmlDeviceGetPowerUsage reports (None: same as power_w)
    instant_power: bool = True  # whether the driver offers the instant power field
    temperature_c: float = 40.0
    sm_clock_mhz: int = 1980
    memory_used_bytes: int = 1024**3
    utilization_pct: int = 0
    throttle_reasons: int = 0
    power_limit_mw: int = 700_000
    persistence_mode: int = 1
    mig_mode: int = 0
    pids: list[int] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # NVML function name -> error code it raises
    _energy_mj: float = 0.0
    _since: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_power(self, watts: float) -> None:
        with self._lock:
            self._fold()
            self.power_w = watts

    def energy_mj(self) -> int:
        with self._lock:
            self._fold()
            return int(self._energy_mj)

    def _fold(self) -> None:
        now = time.monotonic()
        self._energy_mj += self.power_w * (now - self._since) * 1000.0
        self._since = now


class FakeNvml:
    """Module-like: the same function names, constants and error classes as pynvml."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_INSTANT

    def __init__(self, gpus: list[FakeGpu] | None = None, init_error: int | None = None, driver: str = "580.159.04"):
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        self.init_error = init_error
        self.driver = driver
        self.calls: list[str] = []
        self.initialised = False

    def _check(self, name: str, gpu: FakeGpu | None = None) -> None:
        self.calls.append(name)
        if name != "nvmlInit" and not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if gpu is not None and name in gpu.fail:
            raise NVMLError(gpu.fail[name])

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check("nvmlDeviceGetHandleByIndex")
        return self.gpus[index]

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        self._check("nvmlDeviceGetName", gpu)
        return gpu.name

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        self._check("nvmlDeviceGetUUID", gpu)
        return gpu.uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        self._check("nvmlDeviceGetTotalEnergyConsumption", gpu)
        return gpu.energy_mj()

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        self._check("nvmlDeviceGetPowerUsage", gpu)
        watts = gpu.power_w if gpu.average_power_w is None else gpu.average_power_w
        return int(watts * 1000)

    def nvmlDeviceGetFieldValues(self, gpu: FakeGpu, field_ids: list[int]) -> list[SimpleNamespace]:
        self._check("nvmlDeviceGetFieldValues", gpu)
        values = []
        for field_id in field_ids:
            if field_id == NVML_FI_DEV_POWER_INSTANT and gpu.instant_power:
                values.append(SimpleNamespace(fieldId=field_id, nvmlReturn=0, value=SimpleNamespace(uiVal=int(gpu.power_w * 1000))))
            else:
                values.append(SimpleNamespace(fieldId=field_id, nvmlReturn=NVML_ERROR_NOT_SUPPORTED, value=SimpleNamespace(uiVal=0)))
        return values

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        self._check("nvmlDeviceGetTemperature", gpu)
        return int(gpu.temperature_c)

    def nvmlDeviceGetClockInfo(self, gpu: FakeGpu, clock_type: int) -> int:
        self._check("nvmlDeviceGetClockInfo", gpu)
        return gpu.sm_clock_mhz

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:
        self._check("nvmlDeviceGetMemoryInfo", gpu)
        return SimpleNamespace(total=80 * 1024**3, used=gpu.memory_used_bytes, free=80 * 1024**3 - gpu.memory_used_bytes)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        self._check("nvmlDeviceGetUtilizationRates", gpu)
        return SimpleNamespace(gpu=gpu.utilization_pct, memory=0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: FakeGpu) -> int:
        self._check("nvmlDeviceGetCurrentClocksEventReasons", gpu)
        return gpu.throttle_reasons

    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: FakeGpu) -> int:
        self._check("nvmlDeviceGetEnforcedPowerLimit", gpu)
        return gpu.power_limit_mw

    def nvmlDeviceGetPersistenceMode(self, gpu: FakeGpu) -> int:
        self._check("nvmlDeviceGetPersistenceMode", gpu)
        return gpu.persistence_mode

    def nvmlDeviceGetMigMode(self, gpu: FakeGpu) -> list[int]:
        self._check("nvmlDeviceGetMigMode", gpu)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[SimpleNamespace]:
        self._check("nvmlDeviceGetComputeRunningProcesses", gpu)
        return [SimpleNamespace(pid=pid, usedGpuMemory=0) for pid in gpu.pids]


def two_gpus(**kwargs) -> list[FakeGpu]:
    return [
        FakeGpu(uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000", power_w=100.0, **kwargs),
        FakeGpu(uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000", power_w=200.0, **kwargs),
    ]
