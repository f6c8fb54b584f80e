"""An ideal board: a settable constant power whose counter is its exact integral over real time.

A lab instrument, not a GPU: for tests of arithmetic (units, sums, fallbacks, error paths) that
must not depend on counter steps or noise. Every sensor is a plain field a test may set.
Realistic boards are fakegpu.board.SimulatedGpu, built from a Scenario.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from fakegpu.board import Reading
from fakegpu.boards import ARCH_HOPPER


@dataclass
class IdealGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    pci_bus_id: str = "00000000:18:00.0"
    architecture: int | None = ARCH_HOPPER
    power_w: float = 100.0  # instantaneous power; the energy counter integrates it
    average_power_w: float | None = None  # what nvmlDeviceGetPowerUsage reports (None: same as power_w)
    instant_power: bool = True  # whether the driver offers the instant power field
    temperature_c: float = 40.0
    sm_clock_mhz: int = 1980
    memory_used_bytes: int = 1024**3
    memory_total_bytes: int = 80 * 1024**3
    utilization_pct: int = 0
    throttle_reasons: int = 0
    power_limit_mw: int = 700_000
    persistence_mode: int = 1
    mig_mode: int = 0
    mig_instances: list = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # NVML function name -> error code it raises
    _energy_mj: float = 0.0
    _since: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_power(self, watts: float) -> None:
        with self._lock:
            self._fold()
            self.power_w = watts

    def counter_mj(self) -> int:
        with self._lock:
            self._fold()
            return int(self._energy_mj)

    energy_mj = counter_mj

    def set_resident(self, model_bytes: int) -> None:
        """Nothing: an ideal board's power is whatever the test sets (FakeHardware calls this)."""

    def set_activity(self, kind: str | None) -> None:
        """Nothing, as above."""

    def read(self) -> Reading:
        watts = self.power_w if self.average_power_w is None else self.average_power_w
        return Reading(
            power_usage_mw=int(watts * 1000),
            instant_power_mw=int(self.power_w * 1000) if self.instant_power else None,
            temperature_c=int(self.temperature_c),
            sm_clock_mhz=self.sm_clock_mhz,
            memory_used_bytes=self.memory_used_bytes,
            utilization_pct=self.utilization_pct,
            throttle_reasons=self.throttle_reasons,
            pids=list(self.pids),
        )

    def _fold(self) -> None:
        now = time.monotonic()
        self._energy_mj += self.power_w * (now - self._since) * 1000.0
        self._since = now
