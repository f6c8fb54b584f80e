"""Idle GPU power before the model loads, and the dynamic energy it leaves.

Dynamic energy is what the work added on top of an idle GPU:
total - baseline power x window duration, floored at 0 (idle power drifts a
little; a negative energy would be meaningless).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from llem_mlflow.energy.readings import EnergySource, GpuReading


@dataclass(frozen=True)
class Baseline:
    power_w: dict[int, float]  # mean idle power per GPU (CUDA index)
    duration_s: float
    method: str  # how the idle energy was read: nvml_counter | nvml_power_integral

    @property
    def total_w(self) -> float:
        return sum(self.power_w.values())


def measure_idle_power(
    source: EnergySource[GpuReading], duration_s: float, sleep: Callable[[float], None] = time.sleep
) -> Baseline:
    """Open a window on an idle GPU for duration_s; mean power = energy / duration."""
    source.begin()
    sleep(duration_s)
    reading = source.end()
    power = {gpu: joules / reading.duration_s for gpu, joules in reading.energy_j.items()}
    return Baseline(power_w=power, duration_s=reading.duration_s, method=reading.method)


def dynamic_energy_j(total_j: float, baseline_w: float, duration_s: float) -> float:
    return max(0.0, total_j - baseline_w * duration_s)
