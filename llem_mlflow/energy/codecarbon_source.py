"""CPU and RAM energy and emissions from CodeCarbon's offline tracker (no network call).

One tracker per window, so its start and stop are our window's edges. Every
window appends one row (project_name = llem/<phase>) to one CSV in
`output_dir`, which becomes a run artifact. CodeCarbon catches its own
exceptions, logs them and returns None: we capture its log and turn a missing
figure into `CodeCarbonUnavailable` with that reason, never into a 0.

`scope` is CodeCarbon's tracking_mode: "process" bills this process tree's CPU
time share of the TDP and its own resident memory; "machine" bills the whole
machine's CPU load and installed memory. Counters (RAPL) are machine-wide either way.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from llem_mlflow.energy.readings import ESTIMATED, MEASURED, HostReading
from llem_mlflow.errors import EnergyError

JOULES_PER_KWH = 3.6e6
CSV_NAME = "emissions.csv"
# CodeCarbon's CPU modes (codecarbon.external.hardware.CPU._mode) -> how it got the figure.
_CPU_MODES = {
    "intel_rapl": "RAPL (measured by the CPU's energy counters)",
    "intel_power_gadget": "Intel Power Gadget (measured)",
    "windows_emi": "Windows EMI (measured)",
    "apple_powermetrics": "powermetrics (measured)",
    "cpu_load": "estimate: CPU load x TDP",
    "constant": "estimate: constant 50% of TDP",
}
MEASURED_CPU_MODES = frozenset({"intel_rapl", "intel_power_gadget", "windows_emi", "apple_powermetrics"})
SCOPES = ("process", "machine")


class CodeCarbonUnavailable(EnergyError):
    """CodeCarbon gave no figure for a window; the message is the reason."""


class _Capture(logging.Handler):
    """Keeps CodeCarbon's warnings and errors: the only trace of the exceptions it swallows."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        if text not in ("graceful shutdown. Exceptions:", "stopping.") and "Multiple instances" not in text:
            self.messages.append(text)
            if record.levelno >= logging.ERROR:
                self.errors.append(text)


def _quiet_codecarbon(capture: _Capture) -> None:
    logger = logging.getLogger("codecarbon")
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)  # its own console output: errors only
    if capture not in logger.handlers:
        logger.addHandler(capture)


class CodeCarbonSource:
    """begin(phase)/end() -> HostReading, or CodeCarbonUnavailable with the reason."""

    def __init__(self, country_iso_code: str, output_dir: Path, gpu_ids: list[int] | None = None, scope: str = "process"):
        if scope not in SCOPES:
            raise EnergyError(f"energy.codecarbon_scope {scope!r}: use one of {', '.join(SCOPES)}")
        self.country_iso_code = country_iso_code
        self.output_dir = Path(output_dir)
        self.gpu_ids = gpu_ids
        self.scope = scope
        self.cpu_method: str | None = None  # known after the first window
        self.cpu_quality = ESTIMATED
        self._tracker: Any = None
        self._capture = _Capture()
        self._start_error: str | None = None

    @property
    def csv_path(self) -> Path:
        return self.output_dir / CSV_NAME

    def begin(self, phase: str = "window") -> None:
        self._capture.messages.clear()
        self._capture.errors.clear()
        self._tracker, self._start_error = None, None
        try:
            from codecarbon import OfflineEmissionsTracker

            _quiet_codecarbon(self._capture)  # after the import, which installs its console handler
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code,
                project_name=f"llem/{phase}",
                output_dir=str(self.output_dir),
                output_file=CSV_NAME,
                measure_power_secs=1,
                gpu_ids=self.gpu_ids,
                tracking_mode=self.scope,
                allow_multiple_runs=True,  # no lock file shared with other processes
                log_level="warning",
            )
            _quiet_codecarbon(self._capture)  # its __init__ resets the level
            self._tracker.start()
            if self.cpu_method is None:
                self.cpu_method = describe_cpu_method(self._tracker)
                self.cpu_quality = MEASURED if cpu_mode(self._tracker) in MEASURED_CPU_MODES else ESTIMATED
        except Exception as exc:  # an import or init failure: the window is unavailable, the run goes on
            self._start_error = f"{type(exc).__name__}: {exc}"

    def end(self) -> HostReading:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            raise CodeCarbonUnavailable(self._start_error or "the tracker did not start")
        try:
            _read_at_the_edge(tracker)
            emissions = tracker.stop()
        except Exception as exc:
            raise CodeCarbonUnavailable(f"stop() raised {type(exc).__name__}: {exc}") from None
        data = getattr(tracker, "final_emissions_data", None)
        if emissions is None or data is None:
            raise CodeCarbonUnavailable(self._reason("stop() returned no emissions"))
        figures = [data.cpu_energy, data.ram_energy, data.gpu_energy, emissions]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in figures):
            raise CodeCarbonUnavailable(self._reason(f"stop() returned invalid figures {figures}"))
        unresolved = self.scope == "process" and cpu_mode(tracker) == "cpu_load" and _unresolved(data.cpu_energy, data.duration)
        # Emissions are linear in energy: their ratio is the grid intensity CodeCarbon applied.
        consumed_kwh = getattr(data, "energy_consumed", 0.0)
        intensity = float(emissions) / consumed_kwh if isinstance(consumed_kwh, (int, float)) and consumed_kwh > 0 else None
        return HostReading(
            cpu_j=None if unresolved else data.cpu_energy * JOULES_PER_KWH,
            cpu_reason=unresolved_cpu_reason(float(data.duration)) if unresolved else None,
            ram_j=data.ram_energy * JOULES_PER_KWH,
            gpu_j=data.gpu_energy * JOULES_PER_KWH,
            emissions_kg=None if self._capture.errors else float(emissions),
            emissions_reason=f"CodeCarbon logged errors: {'; '.join(self._capture.errors[-3:])}" if self._capture.errors else None,
            duration_s=float(data.duration),
            cpu_quality=self.cpu_quality,
            kg_per_kwh=intensity,
        )

    def close(self) -> None:
        """Stop a tracker left running by an aborted window; never raises."""
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            try:
                tracker.stop()
            except Exception:
                pass

    def _reason(self, fallback: str) -> str:
        logged = "; ".join(self._capture.messages[-3:])
        return f"{fallback} (CodeCarbon logged: {logged})" if logged else fallback


def _read_at_the_edge(tracker: Any) -> None:
    """CodeCarbon 3's stop() skips its last reading when the one before is under 50 ms old, so a
    window shorter than 50 ms read 0 J of CPU and a sliver of its RAM energy, and a longer one lost
    up to 50 ms at its end.
    Its own reading method, called here, ends every window with a reading at the edge."""
    read = getattr(tracker, "_measure_power_and_energy", None)
    if callable(read):
        read()


# A process-scope CPU estimate rests on CPU time, which the kernel counts in ticks (10 ms on Linux).
# A window shorter than this many ticks that counted none cannot tell idle from busy.
RESOLVED_TICKS = 10


def _tick_s() -> float:
    return 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _unresolved(cpu_kwh: float, duration_s: float) -> bool:
    """A 0 over a window too short for that 0 to mean idle (on a long window, 0 is a true near-idle)."""
    return cpu_kwh == 0 and duration_s < RESOLVED_TICKS * _tick_s()


def unresolved_cpu_reason(duration_s: float) -> str:
    return (
        f"its process-scope CPU estimate rests on this process tree's CPU time, which the kernel counts in "
        f"{1000 * _tick_s():g} ms ticks, and this {duration_s:.3f} s window held none: too short to tell idle "
        "from busy, so the window has no CodeCarbon CPU figure rather than a made-up 0 (measure a longer "
        "window, or use energy.codecarbon_scope: machine)"
    )


def country_problem(country_iso_code: str) -> str | None:
    """Why CodeCarbon cannot price this country's grid, or None when it can (reads its bundled table)."""
    try:
        from codecarbon.input import DataSource

        known = DataSource().get_global_energy_mix_data()
    except Exception as exc:
        return f"cannot read CodeCarbon's energy-mix table ({type(exc).__name__}: {exc})"
    if country_iso_code not in known:
        return (
            f"energy.country_iso_code {country_iso_code!r} is not in CodeCarbon's energy-mix table: "
            "use an ISO 3166-1 alpha-3 code such as USA, FRA, DEU"
        )
    return None


def cpu_mode(tracker: Any) -> str | None:
    """CodeCarbon's CPU mode (intel_rapl, cpu_load, constant, ...), read from the tracker's hardware list."""
    for hardware in getattr(tracker, "_hardware", []):
        if type(hardware).__name__ == "CPU" and getattr(hardware, "_mode", None):
            return hardware._mode
    return None


def describe_cpu_method(tracker: Any) -> str:
    """How CodeCarbon measures the CPU, read from the tracker's hardware list."""
    for hardware in getattr(tracker, "_hardware", []):
        mode = getattr(hardware, "_mode", None)
        if type(hardware).__name__ == "CPU" and mode:
            text = _CPU_MODES.get(mode, mode)
            tdp = getattr(hardware, "_tdp", None)
            if text.startswith("estimate") and tdp:
                generic = ", generic TDP: CPU model not in its table" if getattr(hardware, "_is_generic_tdp", False) else ""
                text += f" ({tdp} W{generic})"
            return text
    return "unknown (CodeCarbon reported no CPU)"
