"""What a meter returns for one window, with units in the field names.

Every source follows the same small interface: `begin()` opens a window,
`end()` closes it and returns a reading. A quantity a source could not measure
is None and the reading's `reason` says why; it is never a made-up 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

R = TypeVar("R", covariant=True)


def now_ms() -> int:
    """Wall-clock ms since the epoch: the timestamps of samples and phase edges (what MLflow metric history wants)."""
    return time.time_ns() // 1_000_000


class EnergySource(Protocol[R]):
    """One meter: a window opens at begin() and closes at end()."""

    def begin(self) -> None: ...

    def end(self) -> R: ...


@dataclass(frozen=True)
class GpuSample:
    """One sampler tick for one GPU (None: the driver does not report that field)."""

    timestamp_ms: int  # wall clock, ms since the epoch (what MLflow metric history wants)
    monotonic_s: float  # for integration: immune to clock changes
    gpu: int  # CUDA (logical) index, the i in timeline/gpu<i>_*
    power_w: float | None
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    memory_used_mb: float | None = None
    utilization_pct: float | None = None
    throttle_reasons: int | None = None  # NVML clocks-event bitmask


@dataclass(frozen=True)
class GpuReading:
    """NVML energy of one window, per GPU (CUDA index -> joules)."""

    energy_j: dict[int, float]
    method: str  # "nvml_counter" | "nvml_power_integral" | "nvml_averaged_power_integral", "+"-joined when GPUs differ
    duration_s: float
    peak_power_w: float | None  # highest sampled total power (all GPUs) in the window
    samples: int  # sampler ticks inside the window
    sampled_j: float | None = None  # integral of the sampled power, all GPUs: the counter's cross-check
    notes: dict[str, str] = field(default_factory=dict)  # validity warnings found by the source (name -> text)

    @property
    def total_j(self) -> float:
        return sum(self.energy_j.values())

    @property
    def mean_power_w(self) -> float | None:
        return self.total_j / self.duration_s if self.duration_s > 0 else None


MEASURED, ESTIMATED = "measured", "estimated"


@dataclass(frozen=True)
class HostReading:
    """CodeCarbon's figures for one window (kWh and kg converted to J and kg)."""

    cpu_j: float | None  # None: too short a window for its estimate to resolve (cpu_reason)
    ram_j: float
    gpu_j: float  # CodeCarbon's own GPU figure: a cross-check only, never added to totals
    emissions_kg: float | None  # CodeCarbon's own emissions (a cross-check); None when it logged a problem
    duration_s: float
    emissions_reason: str | None = None
    cpu_quality: str = ESTIMATED  # measured when CodeCarbon read a counter (RAPL, EMI, powermetrics)
    kg_per_kwh: float | None = None  # the grid intensity CodeCarbon applied (its emissions / its energy)
    cpu_reason: str | None = None  # why cpu_j is None


@dataclass(frozen=True)
class RaplReading:
    """RAPL counters over one window: joules per socket (dram empty where the CPU has no dram domain)."""

    package_j: dict[int, float]
    dram_j: dict[int, float]
    duration_s: float

    @property
    def cpu_j(self) -> float:
        return sum(self.package_j.values())

    @property
    def ram_j(self) -> float | None:
        return sum(self.dram_j.values()) if self.dram_j else None


@dataclass(frozen=True)
class CpuLoad:
    """CPU time over one window: this process (and its children) against everything else on the machine."""

    duration_s: float
    n_cpus: int
    own_pct: float  # % of the machine's CPU capacity (all cores) used by this process tree
    others_pct: float  # % used by every other process (floored at 0: clock-tick rounding)
    load_1m: float  # load average at the end of the window


@dataclass(frozen=True)
class SourceEnergy:
    """One energy source's figure in a window, how it was read, and whether it was measured or modelled."""

    joules: float
    meter: str  # nvml | rapl | codecarbon
    quality: str  # measured | estimated


@dataclass
class PhaseEnergy:
    """Everything measured over one phase window (load, warmup, measure, measure/2, ...)."""

    phase: str
    start_ms: int
    end_ms: int
    duration_s: float
    gpu: GpuReading | None = None
    gpu_reason: str | None = None  # why gpu is None
    host: HostReading | None = None
    host_reason: str | None = None  # why host is None
    rapl: RaplReading | None = None
    rapl_reason: str | None = None  # why rapl is None
    cpu_load: CpuLoad | None = None
    warnings: dict[str, str] = field(default_factory=dict)
    gpu_dynamic_j: float | None = None  # GPU energy above the idle baseline (may be negative: never floored)
    gpu_baseline_w: float | None = None  # the idle power subtracted (all GPUs)

    @property
    def sources(self) -> dict[str, SourceEnergy]:
        """gpu (NVML), cpu and ram: RAPL's counters where read, else CodeCarbon's figures; absent if neither."""
        out: dict[str, SourceEnergy] = {}
        if self.gpu is not None:
            out["gpu"] = SourceEnergy(self.gpu.total_j, "nvml", MEASURED)
        if self.rapl is not None:
            out["cpu"] = SourceEnergy(self.rapl.cpu_j, "rapl", MEASURED)
        elif self.host is not None and self.host.cpu_j is not None:
            out["cpu"] = SourceEnergy(self.host.cpu_j, "codecarbon", self.host.cpu_quality)
        if self.rapl is not None and self.rapl.ram_j is not None:
            out["ram"] = SourceEnergy(self.rapl.ram_j, "rapl", MEASURED)
        elif self.host is not None:
            out["ram"] = SourceEnergy(self.host.ram_j, "codecarbon", ESTIMATED)  # a per-GB power model
        return out

    @property
    def total_j(self) -> float | None:
        """The sum of the sources measured (GPU + CPU + RAM); None if none was."""
        sources = self.sources
        return sum(s.joules for s in sources.values()) if sources else None

    @property
    def measured_j(self) -> float | None:
        """The sum of the sources a meter measured (NVML, RAPL); None if every source was modelled."""
        measured = [s.joules for s in self.sources.values() if s.quality == MEASURED]
        return sum(measured) if measured else None

    @property
    def total_sources(self) -> list[str]:
        return list(self.sources)
