"""What happens to a board during a scenario, declared up front.

Times are seconds of simulated time after a milestone of the board: "start" (the scenario was
built), "resident" (the model's weights landed on it), "busy" (the model first ran on it) or
"generate N" (the N-th generate() call began on it: its prefill forward). The run's generate()
calls come in a fixed order (first_generate, then warmup, then the measured batches), so
"generate N" places an event inside a chosen phase whatever the machine's speed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoTenant:
    """Another process starts on the board: it shows in the compute processes and adds its power."""

    pid: int
    watts: float
    at_s: float = 0.0
    after: str = "start"
    for_s: float | None = None  # None: until the end


@dataclass(frozen=True)
class CounterReset:
    """The driver reloads: the energy counter restarts from 0 (a reader sees a negative delta)."""

    at_s: float = 0.0
    after: str = "start"


@dataclass(frozen=True)
class Schedule:
    """A workload on the simulated clock: [(from_s, kind), ...], kind idle | resident | prefill | decode.

    For tests of the fake itself and of the monitor without a model; a run through the real
    runner drives the board from the model's forward calls instead (fakegpu.hardware).
    """

    steps: tuple[tuple[float, str], ...]

    def kind_at(self, t: float) -> str | None:
        kind = None
        for start_s, name in self.steps:
            if t >= start_s:
                kind = name
        return kind
