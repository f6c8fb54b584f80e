"""A fake GPU machine for tests: pynvml's interface over simulated boards (see scenario.py)."""

from fakegpu.board import GPU_IDLE, HW_THERMAL, SW_POWER_CAP, SimulatedGpu
from fakegpu.boards import A10, A100, BOARD_CLASSES, H100, P100, V100, BoardClass
from fakegpu.events import CounterReset, CoTenant, Schedule
from fakegpu.hardware import FakeHardware
from fakegpu.ideal import IdealGpu
from fakegpu.nvml import FakeNvml
from fakegpu.scenario import Gpu, Machine, Scenario

__all__ = [
    "A10", "A100", "BOARD_CLASSES", "GPU_IDLE", "H100", "HW_THERMAL", "P100", "SW_POWER_CAP", "V100", "BoardClass",
    "CoTenant", "CounterReset", "FakeHardware", "FakeNvml", "Gpu", "IdealGpu", "Machine", "Scenario", "Schedule",
    "SimulatedGpu",
]  # fmt: skip
