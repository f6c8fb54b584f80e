"""A scenario: the boards of a fake machine and what happens to them, declared in a few lines.

    machine = Scenario(
        gpus=[Gpu("A100"), Gpu("H100", events=[CoTenant(pid=4242, watts=120, after="busy", at_s=0.2)])],
        model_on=[0],
    ).build()
    EnergyMonitor(cfg, machine.hardware)   # or measure(cfg, hardware=machine.hardware)

Boards get PCI bus ids in the order listed (NVML's order) and seeded UUIDs; `changes` replaces
fields of the board class (a lower power limit, a faster heatsink for a short test).
"""

from __future__ import annotations

import os
import random
import time
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Callable

from fakegpu.board import SimulatedGpu
from fakegpu.boards import BOARD_CLASSES, BoardClass
from fakegpu.events import Schedule
from fakegpu.hardware import FakeHardware
from fakegpu.nvml import FakeNvml

PCI_BUSES = ["18", "3B", "86", "AF", "D8"]


@dataclass(frozen=True)
class Gpu:
    board: str | BoardClass = "H100"
    events: tuple = ()
    schedule: Schedule | None = None  # a workload on the simulated clock (no model)
    mig_instances: int = 0  # >0: MIG mode on with that many instances
    persistence_mode: int = 1
    changes: dict = field(default_factory=dict)  # BoardClass fields to replace


@dataclass
class Machine:
    nvml: FakeNvml
    hardware: FakeHardware
    boards: list[SimulatedGpu]  # NVML (PCI) order


@dataclass(frozen=True)
class Scenario:
    gpus: list[Gpu]
    model_on: list[int] = field(default_factory=lambda: [0])  # CUDA indices the weights land on
    forward_s: float = 0.0  # every forward call of the model lasts at least this long (kernel time)
    seed: int = 0

    def build(self, clock: Callable[[], float] = time.monotonic) -> Machine:
        rng = random.Random(self.seed)
        boards = []
        for n, gpu in enumerate(self.gpus):
            spec = BOARD_CLASSES[gpu.board] if isinstance(gpu.board, str) else gpu.board
            spec = replace(spec, **gpu.changes)
            board_uuid = f"GPU-{uuidlib.UUID(int=rng.getrandbits(128))}"
            mig = tuple(f"MIG-{uuidlib.UUID(int=rng.getrandbits(128))}" for _ in range(gpu.mig_instances))
            boards.append(
                SimulatedGpu(
                    spec, board_uuid, f"00000000:{PCI_BUSES[n]}:00.0", clock, events=gpu.events, schedule=gpu.schedule,
                    seed=rng.getrandbits(32), persistence_mode=gpu.persistence_mode, mig_instances=mig,
                    own_pid=os.getpid(),
                )  # fmt: skip
            )
        nvml = FakeNvml(boards)
        return Machine(nvml, FakeHardware(nvml, self.model_on, self.forward_s), boards)
