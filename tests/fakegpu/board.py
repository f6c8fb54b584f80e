"""One simulated board: power that follows a workload, an energy counter, sensors, heat and throttling.

The board advances in fixed 1 ms steps of simulated time, lazily: every NVML call (and every
change of workload) first brings it up to the clock's now. Within a step everything is constant,
so the true energy is exact for the simulated power; what NVML reports is derived from it the
way a real board derives it:

* the counter is the true energy latched every `counter_period_s` (steps, not a ramp), in mJ;
  a `CounterReset` event restarts it from 0 (a driver reload);
* the instant power is the true power plus seeded sensor noise, refreshed every `sensor_period_s`
  and held in between;
* nvmlDeviceGetPowerUsage is that instant reading, or on boards whose driver averages it, the
  mean power of the last second (energy difference over 1 s), which lags a step by ~0.5 s;
* power follows its target with a short electrical lag; the target is the workload's level
  (idle, resident, prefill, decode) plus co-tenants, raised by leakage as the board heats, cut by
  30 % under thermal slowdown and capped at the power limit, each with its clocks-event bit.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from fakegpu.boards import BoardClass
from fakegpu.events import CounterReset, CoTenant

STEP_S = 0.001
SETTLE_S = 2.0  # simulated idle before t = 0: a full 1 s average and a steady temperature
AVERAGE_WINDOW_S = 1.0

# NVML clocks-event reason bits (nvml.h)
GPU_IDLE, SW_POWER_CAP, HW_SLOWDOWN, SW_THERMAL, HW_THERMAL = 0x01, 0x04, 0x08, 0x20, 0x40


@dataclass(frozen=True)
class Reading:
    """Everything the NVML calls report at one instant (units as NVML gives them)."""

    power_usage_mw: int
    instant_power_mw: int | None  # None: the driver has no instant field
    temperature_c: int
    sm_clock_mhz: int
    memory_used_bytes: int
    utilization_pct: int
    throttle_reasons: int
    pids: list[int]


@dataclass
class MigInstance:
    """A MIG device handle: its own UUID, no power or energy of its own."""

    uuid: str
    parent: "SimulatedGpu"
    fail: dict[str, int] = field(default_factory=dict)


class SimulatedGpu:
    def __init__(
        self,
        spec: BoardClass,
        uuid: str,
        pci_bus_id: str,
        clock: Callable[[], float],
        *,
        events: tuple = (),
        schedule=None,
        seed: int = 0,
        persistence_mode: int = 1,
        mig_instances: tuple[str, ...] = (),
        own_pid: int | None = None,
    ):
        self.spec = spec
        self.name = spec.name
        self.architecture = spec.architecture
        self.uuid = uuid
        self.pci_bus_id = pci_bus_id
        self.persistence_mode = persistence_mode
        self.mig_mode = 1 if mig_instances else 0
        self.mig_instances = [MigInstance(u, self) for u in mig_instances]
        self.fail: dict[str, int] = {}  # NVML function name -> error code it raises
        self.power_limit_mw = int(spec.power_limit_w * 1000)
        self.memory_total_bytes = spec.memory_total_gib * 1024**3
        self._clock = clock
        self._t0 = clock()
        self._events = tuple(events)
        self._schedule = schedule  # kind_at(t) -> "idle" | "resident" | "prefill" | "decode" | None
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._own_pid = own_pid
        # simulated state
        self.milestones: dict[str, float] = {"start": 0.0}
        self.resident = False
        self.resident_bytes = 0
        self._activity: str | None = None  # "prefill" | "decode" while the model runs on this board
        self._generates = 0  # generate() calls seen (each starts with a prefill forward)
        self._t = -SETTLE_S
        self._power = spec.idle_w
        self._temperature = spec.ambient_c + spec.c_per_w * spec.idle_w
        self._energy_j = 0.0
        self._counter_base_j = 0.0  # energy at the last counter reset
        self._counter_j = 0.0  # the value the counter shows: latched at its ticks
        self._resets_done: set[int] = set()
        self._next_counter_s = self._t + self._rng.uniform(0, spec.counter_period_s or STEP_S)
        self._next_sensor_s = self._t
        self._history: deque[tuple[float, float]] = deque()  # (t, energy) at sensor ticks, for the average
        self._instant_w = spec.idle_w
        self._average_w = spec.idle_w
        self._reasons = GPU_IDLE
        self._busy = False
        self._advance(0.0)

    # --- driven by the platform or the test ------------------------------------------------
    def now_s(self) -> float:
        return self._clock() - self._t0

    def set_activity(self, kind: str | None) -> None:
        """The model starts ("prefill" / "decode") or stops (None) running on this board."""
        with self._lock:
            self._advance(self.now_s())
            if kind is not None:
                self.milestones.setdefault("busy", self._t)
            if kind == "prefill":
                self._generates += 1
                self.milestones[f"generate {self._generates}"] = self._t
            self._activity = kind

    def set_resident(self, model_bytes: int) -> None:
        """A CUDA context is up and the model's weights sit in memory."""
        with self._lock:
            self._advance(self.now_s())
            self.resident, self.resident_bytes = True, model_bytes
            self.milestones.setdefault("resident", self._t)

    # --- what NVML reads -----------------------------------------------------------------
    def counter_mj(self) -> int | None:
        """nvmlDeviceGetTotalEnergyConsumption, or None where the board has no counter."""
        if not self.spec.has_counter:
            return None
        with self._lock:
            self._advance(self.now_s())
            value_j = self._counter_j if self.spec.counter_period_s else self._energy_j - self._counter_base_j
            return int(value_j * 1000)

    def read(self) -> Reading:
        with self._lock:
            self._advance(self.now_s())
            usage_w = self._average_w if self.spec.usage_is_averaged else self._instant_w
            busy = self._busy
            clock = self.spec.max_clock_mhz if busy else self.spec.idle_clock_mhz
            if self._reasons & (HW_THERMAL | SW_POWER_CAP):
                clock = int(clock * 0.7)
            pids = ([self._own_pid] if self.resident and self._own_pid is not None else []) + [
                e.pid for e in self._active(CoTenant, self._t)
            ]
            return Reading(
                power_usage_mw=int(usage_w * 1000),
                instant_power_mw=int(self._instant_w * 1000) if self.spec.instant_field else None,
                temperature_c=int(self._temperature),
                sm_clock_mhz=clock,
                memory_used_bytes=(512 * 1024**2 if self.resident else 0) + self.resident_bytes,
                utilization_pct={"prefill": 99, "decode": 93}.get(self._activity or "", 0) if busy else 0,
                throttle_reasons=self._reasons,
                pids=pids,
            )

    def true_energy_j(self, until_s: float | None = None) -> float:
        """The exact simulated energy since t = 0 (for tests of the fake itself)."""
        with self._lock:
            self._advance(self.now_s() if until_s is None else until_s)
            return self._energy_j

    # --- the simulation -------------------------------------------------------------------
    def _advance(self, until_s: float) -> None:
        spec = self.spec
        power_k = 1 - math.exp(-STEP_S / spec.response_tau_s)
        heat_k = 1 - math.exp(-STEP_S / spec.thermal_tau_s)
        while self._t + STEP_S <= until_s:
            t = self._t
            target, self._reasons, self._busy = self._target_w(t)
            self._power += (target - self._power) * power_k
            self._energy_j += self._power * STEP_S
            self._temperature += (spec.ambient_c + spec.c_per_w * self._power - self._temperature) * heat_k
            self._t = t + STEP_S
            self._reset_counter_if_due()
            if spec.counter_period_s and self._t >= self._next_counter_s:
                self._counter_j = self._energy_j - self._counter_base_j
                self._next_counter_s += spec.counter_period_s
            if self._t >= self._next_sensor_s:
                self._sense()
                self._next_sensor_s += spec.sensor_period_s

    def _target_w(self, t: float) -> tuple[float, int, bool]:
        spec = self.spec
        kind = self._activity or (self._schedule.kind_at(t) if self._schedule else None)
        if kind is None or kind == "idle":
            kind = "resident" if self.resident else "idle"
        busy = kind in ("prefill", "decode")
        base = {"idle": spec.idle_w, "resident": spec.resident_w, "prefill": spec.prefill_w, "decode": spec.decode_w}[kind]
        target = base * (1 + spec.leakage_per_c * (self._temperature - spec.ambient_c))
        co_tenants = self._active(CoTenant, t)
        target += sum(e.watts for e in co_tenants)
        reasons = 0 if busy or co_tenants else GPU_IDLE
        if self._temperature >= spec.slowdown_c:
            target *= 0.7
            reasons |= HW_THERMAL
        limit_w = self.power_limit_mw / 1000
        if target > limit_w:
            target = limit_w
            reasons |= SW_POWER_CAP
        return target, reasons, busy or bool(co_tenants)

    def _sense(self) -> None:
        noise = self._rng.gauss(0.0, self.spec.noise_w)
        self._instant_w = max(0.0, self._power * self.spec.power_sensor_gain + noise)
        self._history.append((self._t, self._energy_j))
        while self._history and self._history[0][0] < self._t - AVERAGE_WINDOW_S - 0.2:
            self._history.popleft()
        then = self._energy_at(self._t - AVERAGE_WINDOW_S)
        self._average_w = max(0.0, (self._energy_j - then) / AVERAGE_WINDOW_S * self.spec.power_sensor_gain + noise * 0.2)

    def _energy_at(self, t: float) -> float:
        """Energy at a past time, interpolated between sensor ticks."""
        points = self._history
        for (t0, e0), (t1, e1) in zip(points, list(points)[1:]):
            if t0 <= t <= t1:
                return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else e0
        return points[0][1]

    def _reset_counter_if_due(self) -> None:
        for n, event in enumerate(self._events):
            if isinstance(event, CounterReset) and n not in self._resets_done and self._due(event, self._t):
                self._resets_done.add(n)
                self._counter_base_j = self._energy_j  # the driver reloaded: the counter restarts at 0
                self._counter_j = 0.0

    def _active(self, kind: type, t: float) -> list:
        return [e for e in self._events if isinstance(e, kind) and self._due(e, t) and not self._over(e, t)]

    def _due(self, event, t: float) -> bool:
        since = self.milestones.get(event.after)
        return since is not None and t >= since + event.at_s

    def _over(self, event, t: float) -> bool:
        until = getattr(event, "for_s", None)
        return until is not None and t >= self.milestones[event.after] + event.at_s + until
