"""GPU energy from NVML: the total-energy counter per GPU, and a power sampler thread.

`lib` is the NVML library object: the real `pynvml` module (nvidia-ml-py) by
default, or a fake with the same calls in tests. Every call goes through
`Nvml.call`, which turns NVML's exceptions into our `NvmlError`, so no NVML
error escapes as a crash.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from llem_mlflow.energy.devices import GpuTarget, NvmlBoard
from llem_mlflow.energy.readings import GpuReading, GpuSample, now_ms
from llem_mlflow.errors import EnergyError

log = logging.getLogger(__name__)

# NVML's ABI numbers (nvml.h); a fake library must use the same.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_GPU_IS_LOST = 15
NVML_FI_DEV_POWER_INSTANT = 186
NVML_DEVICE_ARCH_AMPERE = 7
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_FEATURE_ENABLED = 1
MIB = 1024 * 1024

_NAMES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_SUPPORTED: "NotSupported",
    NVML_ERROR_NO_PERMISSION: "NoPermission",
    NVML_ERROR_NOT_FOUND: "NotFound",
    NVML_ERROR_DRIVER_NOT_LOADED: "DriverNotLoaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "LibraryNotFound",
    NVML_ERROR_FUNCTION_NOT_FOUND: "FunctionNotFound",
    NVML_ERROR_GPU_IS_LOST: "GpuIsLost",
}


class NvmlError(EnergyError):
    """An NVML call failed; `code` is NVML's return code (None: not an NVML error code)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code

    @property
    def not_supported(self) -> bool:
        return self.code == NVML_ERROR_NOT_SUPPORTED


class NvmlUnavailable(NvmlError):
    """NVML cannot be used at all here: no library, no driver, no GPU."""


class Nvml:
    """The NVML library behind one safe `call`."""

    def __init__(self, lib: Any):
        self.lib = lib
        self._error_type = getattr(lib, "NVMLError", None) or _NeverRaised

    def call(self, name: str, *args: Any) -> Any:
        fn = getattr(self.lib, name, None)
        if fn is None:
            raise NvmlError(f"NVML has no {name} (nvidia-ml-py too old?)", NVML_ERROR_FUNCTION_NOT_FOUND)
        try:
            return fn(*args)
        except self._error_type as exc:
            code = getattr(exc, "value", None)
            raise NvmlError(f"{name}: {_NAMES.get(code, exc)} (NVML error {code})", code) from None
        except Exception as exc:  # ctypes or binding bugs: still ours, never a crash
            raise NvmlError(f"{name}: {type(exc).__name__}: {exc}") from None

    def optional(self, name: str, *args: Any) -> Any:
        """The value, or None where this GPU or driver does not provide it."""
        try:
            return self.call(name, *args)
        except NvmlError:
            return None


class _NeverRaised(Exception):
    pass


def open_nvml(lib: Any | None = None) -> Nvml:
    """Initialise NVML (the real pynvml unless `lib` is given); NvmlUnavailable says why it cannot."""
    if lib is None:
        try:
            import pynvml as lib  # nvidia-ml-py
        except ImportError as exc:
            raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
    nvml = Nvml(lib)
    try:
        nvml.call("nvmlInit")
        count = nvml.call("nvmlDeviceGetCount")
    except NvmlError as exc:
        raise NvmlUnavailable(f"NVML cannot start: {exc}", exc.code) from None
    if not count:
        raise NvmlUnavailable("NVML sees no GPU")
    return nvml


def read_boards(nvml: Nvml) -> list[NvmlBoard]:
    """Every board by NVML index: UUID, PCI bus id and, with MIG on, its instances' UUIDs."""
    boards = []
    for index in range(nvml.call("nvmlDeviceGetCount")):
        handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
        pci = nvml.optional("nvmlDeviceGetPciInfo", handle)
        uuid = _text(nvml.call("nvmlDeviceGetUUID", handle))
        boards.append(NvmlBoard(index, uuid, _text(pci.busId) if pci else None, _mig_uuids(nvml, handle)))
    return boards


def _mig_uuids(nvml: Nvml, handle: Any) -> tuple[str, ...]:
    mode = nvml.optional("nvmlDeviceGetMigMode", handle)
    if not mode or mode[0] != NVML_FEATURE_ENABLED:
        return ()
    uuids = []
    for slot in range(nvml.optional("nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
        mig = nvml.optional("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)  # empty slots: NotFound
        if mig is not None:
            uuids.append(_text(nvml.call("nvmlDeviceGetUUID", mig)))
    return tuple(uuids)


@dataclass
class GpuDevice:
    """One measured GPU: its handle, what it supports, and its facts for tags."""

    target: GpuTarget
    handle: Any
    name: str
    power_limit_w: float | None
    persistence_mode: bool | None
    mig: str
    counter_supported: bool
    instant_power_supported: bool
    pci_bus_id: str | None = None
    usage_averaged: bool = False  # nvmlDeviceGetPowerUsage is a 1 s moving average on this board

    @property
    def power_method(self) -> str:
        """How its sampled power integrates: the instant field, or a 1 s average that lags."""
        averaged = self.usage_averaged and not self.instant_power_supported
        return "nvml_averaged_power_integral" if averaged else "nvml_power_integral"


def open_device(nvml: Nvml, target: GpuTarget) -> GpuDevice:
    handle = nvml.call("nvmlDeviceGetHandleByIndex", target.nvml_index)
    limit_mw = nvml.optional("nvmlDeviceGetEnforcedPowerLimit", handle)
    persistence = nvml.optional("nvmlDeviceGetPersistenceMode", handle)
    mig = nvml.optional("nvmlDeviceGetMigMode", handle)
    pci = nvml.optional("nvmlDeviceGetPciInfo", handle)
    name = _text(nvml.optional("nvmlDeviceGetName", handle) or "unknown")
    device = GpuDevice(
        target=target,
        handle=handle,
        name=name,
        power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
        persistence_mode=None if persistence is None else persistence == NVML_FEATURE_ENABLED,
        mig=_mig_text(mig, target),
        counter_supported=nvml.optional("nvmlDeviceGetTotalEnergyConsumption", handle) is not None,
        instant_power_supported=False,
        pci_bus_id=_text(pci.busId) if pci else None,
        usage_averaged=_usage_is_averaged(nvml.optional("nvmlDeviceGetArchitecture", handle), name),
    )
    device.instant_power_supported = _instant_power_mw(nvml, handle) is not None
    return device


def _mig_text(mode: Any, target: GpuTarget) -> str:
    if mode is None:
        return "not supported"
    if mode[0] != NVML_FEATURE_ENABLED:
        return "disabled"
    if not target.mig_instances:
        return "enabled"
    return f"enabled: all {len(target.mig_instances)} instance(s) in this run"


def _usage_is_averaged(architecture: int | None, name: str) -> bool:
    """NVML: nvmlDeviceGetPowerUsage is a 1 s average on Ampere and newer, except GA100 (A100, A30,
    A800), where it is instantaneous, as on older boards. Unknown architecture: assume averaged."""
    if architecture is None or architecture >= 0xFFFFFFFF:
        return True
    if architecture < NVML_DEVICE_ARCH_AMPERE:
        return False
    return not re.search(r"\bA(100|30|800)\b", name)


def _instant_power_mw(nvml: Nvml, handle: Any) -> float | None:
    """Instantaneous power (Ampere and newer drivers): not the 1 s average that nvmlDeviceGetPowerUsage gives."""
    values = nvml.optional("nvmlDeviceGetFieldValues", handle, [NVML_FI_DEV_POWER_INSTANT])
    if not values or values[0].nvmlReturn != 0:
        return None
    return float(values[0].value.uiVal)


def read_power_w(nvml: Nvml, device: GpuDevice) -> float:
    milliwatts = _instant_power_mw(nvml, device.handle) if device.instant_power_supported else None
    if milliwatts is None:
        milliwatts = nvml.call("nvmlDeviceGetPowerUsage", device.handle)
    return milliwatts / 1000.0


def read_counter_j(nvml: Nvml, device: GpuDevice) -> float:
    return nvml.call("nvmlDeviceGetTotalEnergyConsumption", device.handle) / 1000.0  # mJ -> J


def throttle_reasons(nvml: Nvml, handle: Any) -> int | None:
    # The call was renamed "clocks event reasons" in newer drivers; older bindings have only the first name.
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        if hasattr(nvml.lib, name):
            return nvml.optional(name, handle)
    return None


def running_pids(nvml: Nvml, device: GpuDevice) -> list[int] | None:
    processes = nvml.optional("nvmlDeviceGetComputeRunningProcesses", device.handle)
    return None if processes is None else [int(p.pid) for p in processes]


class PowerSampler:
    """A daemon thread reading power, temperature, SM clock, memory and utilisation every interval."""

    def __init__(self, nvml: Nvml, devices: list[GpuDevice], interval_s: float):
        self._nvml = nvml
        self._devices = list(devices)
        self._interval_s = interval_s
        self._samples: list[GpuSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsupported: set[tuple[int, str]] = set()  # (gpu, field) the driver refused once
        self.error: str | None = None  # why the thread stopped early

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llem-power-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def set_devices(self, devices: list[GpuDevice]) -> None:
        """Sample these GPUs from the next tick on (the model landed on other GPUs than configured)."""
        with self._lock:
            self._devices = list(devices)

    @property
    def samples(self) -> list[GpuSample]:
        """Every sample in time order (ticks from the edges and the thread can land out of order)."""
        with self._lock:
            return sorted(self._samples, key=lambda s: s.monotonic_s)

    def sample_now(self) -> float:
        """One tick for every GPU, stamped with one time (so ticks sum over GPUs); returns that time."""
        with self._lock:
            devices = list(self._devices)
        monotonic_s, timestamp_ms = time.monotonic(), now_ms()
        tick = [self._sample(device, monotonic_s, timestamp_ms) for device in devices]
        with self._lock:
            self._samples.extend(tick)
        return monotonic_s

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_now()
            except Exception as exc:  # never let the thread die silently or crash the run
                self.error = f"power sampler stopped: {type(exc).__name__}: {exc}"
                log.warning(self.error)
                return
            deadline += self._interval_s
            self._stop.wait(max(0.0, deadline - time.monotonic()))

    def _field(self, device: GpuDevice, name: str, read: Callable[[], Any]) -> Any:
        key = (device.target.cuda_index, name)
        if key in self._unsupported:
            return None
        try:
            return read()
        except NvmlError as exc:
            if exc.not_supported:
                self._unsupported.add(key)
            return None

    def _sample(self, device: GpuDevice, monotonic_s: float, timestamp_ms: int) -> GpuSample:
        nvml, handle = self._nvml, device.handle
        memory = self._field(device, "memory", lambda: nvml.call("nvmlDeviceGetMemoryInfo", handle))
        utilization = self._field(device, "utilization", lambda: nvml.call("nvmlDeviceGetUtilizationRates", handle))
        clock = self._field(device, "clock", lambda: nvml.call("nvmlDeviceGetClockInfo", handle, NVML_CLOCK_SM))
        temperature = self._field(
            device, "temperature", lambda: nvml.call("nvmlDeviceGetTemperature", handle, NVML_TEMPERATURE_GPU)
        )
        return GpuSample(
            timestamp_ms=timestamp_ms,
            monotonic_s=monotonic_s,
            gpu=device.target.cuda_index,
            power_w=self._field(device, "power", lambda: read_power_w(nvml, device)),
            temperature_c=None if temperature is None else float(temperature),
            sm_clock_mhz=None if clock is None else float(clock),
            memory_used_mb=None if memory is None else memory.used / MIB,
            utilization_pct=None if utilization is None else float(utilization.gpu),
            throttle_reasons=self._field(device, "throttle", lambda: throttle_reasons(nvml, handle)),
        )


def integrate_power_j(samples: list[GpuSample], gpu: int) -> float | None:
    """Trapezoid integral of one GPU's sampled power, in time order; None with under 2 samples."""
    points = sorted((s.monotonic_s, s.power_w) for s in samples if s.gpu == gpu and s.power_w is not None)
    if len(points) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:]))


def samples_in(samples: list[GpuSample], start_s: float, end_s: float) -> list[GpuSample]:
    return [s for s in samples if start_s <= s.monotonic_s <= end_s]


def peak_total_power_w(samples: list[GpuSample]) -> float | None:
    """Highest power summed over GPUs at one tick."""
    ticks: dict[float, float] = {}
    for s in samples:
        if s.power_w is not None:
            ticks[s.monotonic_s] = ticks.get(s.monotonic_s, 0.0) + s.power_w
    return max(ticks.values()) if ticks else None


AVERAGING_S = 1.0  # nvmlDeviceGetPowerUsage's moving average on Ampere (except GA100) and newer
COUNTER_CHECK_MIN_S = 5.0  # the counter and the sampled integral are compared on windows this long
COUNTER_CHECK_TOLERANCE = 0.10


class NvmlGpuSource:
    """begin()/end() -> GpuReading: counter deltas per GPU, with a CUDA synchronize at each edge.

    A GPU whose counter is missing, went backwards (a driver reload resets it) or did not advance
    in the window (it updates about every 100 ms) gets the integral of its sampled power for that
    window instead, and the reading says so (method and notes): never a made-up 0.
    """

    def __init__(self, nvml: Nvml, devices: list[GpuDevice], sampler: PowerSampler, synchronize: Callable[[], None]):
        self._nvml = nvml
        self._devices = list(devices)
        self._sampler = sampler
        self._synchronize = synchronize
        self._start_s: float | None = None
        self._start_j: dict[int, float] | None = None
        self._start_tick_s = 0.0

    def set_devices(self, devices: list[GpuDevice]) -> None:
        self._devices = list(devices)

    @property
    def method(self) -> str:
        """The method a window uses when nothing goes wrong."""
        if all(d.counter_supported for d in self._devices):
            return "nvml_counter"
        return "+".join(sorted({d.power_method for d in self._devices}))

    def begin(self) -> None:
        self._synchronize()  # work queued before the window must not land inside it
        self._start_j = self._read_counters()
        self._start_s = time.monotonic()
        self._start_tick_s = self._sampler.sample_now()  # a power point at the edge, for the integral

    def end(self) -> GpuReading:
        if self._start_s is None:
            raise NvmlError("end() without begin()")
        self._synchronize()  # the window holds all the work launched inside it
        end_j = self._read_counters()
        duration_s = time.monotonic() - self._start_s
        end_tick_s = self._sampler.sample_now()
        window = samples_in(self._sampler.samples, self._start_tick_s, end_tick_s)
        start_j, self._start_s, self._start_j = self._start_j, None, None
        energy: dict[int, float] = {}
        methods: set[str] = set()
        notes: dict[str, list[str]] = {}
        for device in self._devices:
            gpu = device.target.cuda_index
            delta = None if start_j is None or end_j is None else end_j[gpu] - start_j[gpu]
            if delta is not None and delta > 0:
                energy[gpu] = delta
                methods.add("nvml_counter")
                continue
            if delta is not None and delta < 0:
                notes.setdefault("counter_reset", []).append(
                    f"GPU {gpu}: the energy counter went back by {-delta:.1f} J (a driver reload restarts it at 0); "
                    "this window's energy is the integral of sampled power instead"
                )
            elif delta == 0:
                notes.setdefault("counter_stalled", []).append(
                    f"GPU {gpu}: the energy counter did not advance in this {duration_s:.3f} s window (it updates "
                    "about every 100 ms); this window's energy is the integral of sampled power instead"
                )
            joules = integrate_power_j(window, gpu)
            if joules is None:
                raise NvmlError(f"GPU {gpu}: no energy counter and too few power samples to integrate")
            energy[gpu] = joules
            methods.add(device.power_method)
            if device.power_method == "nvml_averaged_power_integral":
                notes.setdefault("averaged_power", []).append(_averaged_power_note(window, gpu))
        sampled_j = _sum_or_none([integrate_power_j(window, d.target.cuda_index) for d in self._devices])
        instant = all(d.power_method == "nvml_power_integral" for d in self._devices)  # an average would lag
        if methods == {"nvml_counter"} and sampled_j and instant and duration_s >= COUNTER_CHECK_MIN_S:
            counter_j = sum(energy.values())
            if abs(counter_j / sampled_j - 1) > COUNTER_CHECK_TOLERANCE:
                notes["counter_vs_samples"] = [
                    f"the energy counter ({counter_j:.1f} J) and the integral of sampled power ({sampled_j:.1f} J) "
                    f"differ by {100 * (counter_j / sampled_j - 1):+.0f} % over {duration_s:.1f} s (tolerance "
                    f"{100 * COUNTER_CHECK_TOLERANCE:.0f} %): a counter reset inside the window, a miscalibrated "
                    "sensor, or the wrong board"
                ]
        return GpuReading(
            energy_j=energy,
            method="+".join(sorted(methods)),
            duration_s=duration_s,
            peak_power_w=peak_total_power_w(window),
            samples=len({s.monotonic_s for s in window}),
            sampled_j=sampled_j,
            notes={name: "; ".join(texts) for name, texts in notes.items()},
        )

    def _read_counters(self) -> dict[int, float] | None:
        """Counter per GPU in J, or None when any GPU lacks it (then the window integrates power)."""
        if not all(d.counter_supported for d in self._devices):
            return None
        try:
            return {d.target.cuda_index: read_counter_j(self._nvml, d) for d in self._devices}
        except NvmlError as exc:
            log.warning("NVML energy counter read failed (%s); integrating sampled power for this window", exc)
            return None


def _averaged_power_note(window: list[GpuSample], gpu: int) -> str:
    """The error bound of integrating a 1 s moving average: it lags by half a second at each edge."""
    powers = [s.power_w for s in window if s.gpu == gpu and s.power_w is not None]
    low, high = min(powers), max(powers)
    return (
        f"GPU {gpu}: this window integrates nvmlDeviceGetPowerUsage, which this board averages over the last "
        f"{AVERAGING_S:.0f} s (no instant power field): the figure lags the real power by ~{AVERAGING_S / 2:.1f} s, "
        f"so each edge may be off by up to {AVERAGING_S / 2:.1f} s x the power change there "
        f"(here up to {AVERAGING_S / 2 * (high - low):.1f} J per edge, power {low:.0f}-{high:.0f} W)"
    )


def _sum_or_none(parts: list[float | None]) -> float | None:
    return None if not parts or any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
