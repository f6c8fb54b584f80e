"""A fake NVML library: pynvml's calls, constants and error classes, over fake boards.

The boards are SimulatedGpu (fakegpu.board) or IdealGpu (fakegpu.ideal); both give `read()`
(a Reading of every sensor at one instant) and `counter_mj()`. Handles are the board objects
themselves, or MigInstance objects for MIG devices. `board.fail[name] = code` makes that call
raise NVMLError(code), like the driver.
"""

from __future__ import annotations

from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_FI_DEV_POWER_INSTANT = 186
NVML_DEVICE_MIG_ENABLE = 1
MAX_MIG_DEVICES = 7


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


class NVMLError_NotFound(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


NVMLError._by_code.update(
    {
        NVML_ERROR_NOT_SUPPORTED: NVMLError_NotSupported,
        NVML_ERROR_NOT_FOUND: NVMLError_NotFound,
        NVML_ERROR_LIBRARY_NOT_FOUND: NVMLError_LibraryNotFound,
        NVML_ERROR_GPU_IS_LOST: NVMLError_GpuIsLost,
    }
)


def _field(field_id: int, value_mw: int | None) -> SimpleNamespace:
    """One nvmlFieldValue_t: nvmlReturn 0 and value.uiVal, or NOT_SUPPORTED."""
    ok = value_mw is not None
    return SimpleNamespace(
        fieldId=field_id, scopeId=0, timestamp=0, latencyUsec=0, valueType=0,
        nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED, value=SimpleNamespace(uiVal=value_mw or 0),
    )  # fmt: skip


class FakeNvml:
    """Module-like: the same function names, constants and error classes as pynvml."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_INSTANT

    def __init__(self, gpus: list | None = None, init_error: int | None = None, driver: str = "580.159.04"):
        if gpus is None:
            from fakegpu.ideal import IdealGpu

            gpus = [IdealGpu()]
        self.gpus = gpus  # in NVML's order: PCI bus id
        self.init_error = init_error
        self.driver = driver
        self.calls: list[str] = []
        self.initialised = False

    def _check(self, name: str, handle=None) -> None:
        self.calls.append(name)
        if name != "nvmlInit" and not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if handle is not None and name in handle.fail:
            raise NVMLError(handle.fail[name])

    def _board(self, name: str, handle):
        """The board behind a handle; MIG devices have no power or energy of their own."""
        self._check(name, handle)
        if not hasattr(handle, "read"):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return handle

    # --- library -----------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver

    # --- handles and identity -------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int):
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes):
        self._check("nvmlDeviceGetHandleByUUID")
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            for handle in [gpu, *getattr(gpu, "mig_instances", [])]:
                if handle.uuid == text:
                    return handle
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle) -> str:
        self._check("nvmlDeviceGetUUID", handle)
        return handle.uuid

    def nvmlDeviceGetName(self, gpu) -> str:
        self._check("nvmlDeviceGetName", gpu)
        return gpu.name

    def nvmlDeviceGetPciInfo(self, gpu) -> SimpleNamespace:
        self._check("nvmlDeviceGetPciInfo", gpu)
        bus_id = gpu.pci_bus_id.encode()
        return SimpleNamespace(busId=bus_id, busIdLegacy=bus_id, bus=int(gpu.pci_bus_id.split(":")[1], 16))

    def nvmlDeviceGetArchitecture(self, gpu) -> int:
        self._check("nvmlDeviceGetArchitecture", gpu)
        if gpu.architecture is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.architecture

    # --- MIG ------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, gpu) -> list[int]:
        self._check("nvmlDeviceGetMigMode", gpu)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceIsMigDeviceHandle(self, handle) -> int:
        self._check("nvmlDeviceIsMigDeviceHandle")
        return 0 if hasattr(handle, "read") else 1

    def nvmlDeviceGetMaxMigDeviceCount(self, gpu) -> int:
        self._check("nvmlDeviceGetMaxMigDeviceCount", gpu)
        return MAX_MIG_DEVICES if gpu.mig_mode == NVML_DEVICE_MIG_ENABLE else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, gpu, index: int):
        self._check("nvmlDeviceGetMigDeviceHandleByIndex", gpu)
        instances = getattr(gpu, "mig_instances", [])
        if gpu.mig_mode != NVML_DEVICE_MIG_ENABLE:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(instances):
            raise NVMLError(NVML_ERROR_NOT_FOUND)  # an empty slot, as the driver says
        return instances[index]

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, mig):
        self._check("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", mig)
        if not hasattr(mig, "parent"):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return mig.parent

    # --- energy, power, sensors -------------------------------------------------------------
    def nvmlDeviceGetTotalEnergyConsumption(self, gpu) -> int:
        value = self._board("nvmlDeviceGetTotalEnergyConsumption", gpu).counter_mj()
        if value is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetPowerUsage(self, gpu) -> int:
        return self._board("nvmlDeviceGetPowerUsage", gpu).read().power_usage_mw

    def nvmlDeviceGetFieldValues(self, gpu, field_ids: list[int]) -> list[SimpleNamespace]:
        reading = self._board("nvmlDeviceGetFieldValues", gpu).read()
        return [_field(f, reading.instant_power_mw if f == NVML_FI_DEV_POWER_INSTANT else None) for f in field_ids]

    def nvmlDeviceGetTemperature(self, gpu, sensor: int) -> int:
        return self._board("nvmlDeviceGetTemperature", gpu).read().temperature_c

    def nvmlDeviceGetClockInfo(self, gpu, clock_type: int) -> int:
        return self._board("nvmlDeviceGetClockInfo", gpu).read().sm_clock_mhz

    def nvmlDeviceGetMemoryInfo(self, gpu) -> SimpleNamespace:
        used = self._board("nvmlDeviceGetMemoryInfo", gpu).read().memory_used_bytes
        return SimpleNamespace(total=gpu.memory_total_bytes, used=used, free=gpu.memory_total_bytes - used)

    def nvmlDeviceGetUtilizationRates(self, gpu) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._board("nvmlDeviceGetUtilizationRates", gpu).read().utilization_pct, memory=0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu) -> int:
        return self._board("nvmlDeviceGetCurrentClocksEventReasons", gpu).read().throttle_reasons

    def nvmlDeviceGetEnforcedPowerLimit(self, gpu) -> int:
        self._check("nvmlDeviceGetEnforcedPowerLimit", gpu)
        return gpu.power_limit_mw

    def nvmlDeviceGetPersistenceMode(self, gpu) -> int:
        self._check("nvmlDeviceGetPersistenceMode", gpu)
        return gpu.persistence_mode

    def nvmlDeviceGetComputeRunningProcesses(self, gpu) -> list[SimpleNamespace]:
        pids = self._board("nvmlDeviceGetComputeRunningProcesses", gpu).read().pids
        return [SimpleNamespace(pid=pid, usedGpuMemory=0) for pid in pids]
