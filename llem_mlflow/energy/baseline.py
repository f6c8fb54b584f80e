"""Idle GPU power (before the model loads, and with it resident) and the dynamic energy it leaves.

Dynamic energy is what the work added on top of an idle GPU: total - idle power x window
duration. It is not floored: a window that drew less than the idle baseline (idle power drifts
with temperature and clocks) gives a negative figure, logged as measured with a warning, so an
average over trials stays unbiased and the reader sees the noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from llem_mlflow.energy.readings import EnergySource, GpuReading

BEFORE_LOAD, LOADED = "idle_before_load", "idle_loaded"


@dataclass(frozen=True)
class Baseline:
    power_w: dict[int, float]  # mean idle power per GPU (CUDA index)
    duration_s: float
    method: str  # how the idle energy was read: nvml_counter | nvml_power_integral | ...
    kind: str = BEFORE_LOAD  # idle_before_load | idle_loaded

    @property
    def total_w(self) -> float:
        return sum(self.power_w.values())


def measure_idle_power(
    source: EnergySource[GpuReading],
    duration_s: float,
    sleep: Callable[[float], None] = time.sleep,
    kind: str = BEFORE_LOAD,
) -> Baseline:
    """Open a window on an idle GPU for duration_s; mean power = energy / duration."""
    source.begin()
    sleep(duration_s)
    reading = source.end()
    power = {gpu: joules / reading.duration_s for gpu, joules in reading.energy_j.items()}
    return Baseline(power_w=power, duration_s=reading.duration_s, method=reading.method, kind=kind)


def dynamic_energy_j(total_j: float, baseline_w: float, duration_s: float) -> float:
    """Energy above idle; negative when the window drew less than the baseline (kept, never floored)."""
    return total_j - baseline_w * duration_s
