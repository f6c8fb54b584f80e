"""Peak memory per phase: the process's resident set and, on GPUs, torch's allocator peaks.

Resident set (RSS). Linux keeps each process's high-water mark (VmHWM in
/proc/self/status), and a process may reset it to its current RSS by writing
"5" to /proc/self/clear_refs. Reset at a phase's start and read at its end, it
is that phase's exact peak, and nothing runs inside the phase. Where it cannot
be reset (not Linux, or /proc not writable), a daemon thread reads the RSS
every 50 ms instead (psutil: one /proc read, tens of microseconds, so well
under 0.1% of a core), which misses a peak that lasts less than that.
Resetting the mark also resets getrusage's ru_maxrss, so the process's
lifetime peak is kept here: the highest of every reading.

GPUs: torch's peak allocated and reserved bytes per phase, reset at each
phase's start (the first reading, at the end of the load, covers everything
since the process started), summed over the model's GPUs.
"""

from __future__ import annotations

import threading
from pathlib import Path

MIB = 1024.0 * 1024.0
SAMPLE_INTERVAL_S = 0.05
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


class HighWaterMark:
    """The kernel's own peak RSS, reset at each phase start (Linux)."""

    method = "kernel high-water mark (VmHWM), reset at each phase start"

    def __init__(self) -> None:
        """Raises OSError or ValueError where the mark cannot be read or reset."""
        self.lifetime_mb = _status_mb("VmHWM")  # the peak so far (imports, config): read before any reset
        _reset_high_water_mark()

    def reset(self) -> None:
        self.peak_mb()  # what the mark held until now still counts for the lifetime peak
        _reset_high_water_mark()

    def peak_mb(self) -> float:
        peak = _status_mb("VmHWM")
        self.lifetime_mb = max(self.lifetime_mb, peak)
        return peak

    def close(self) -> None:
        pass


class SampledRss:
    """RSS read every 50 ms by a daemon thread, and at every reset and read."""

    method = f"sampled every {SAMPLE_INTERVAL_S * 1000:.0f} ms (psutil)"

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._peak_mb = self._rss_mb()
        self.lifetime_mb = self._peak_mb
        self._thread = threading.Thread(target=self._run, name="llem-rss-sampler", daemon=True)
        self._thread.start()

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / MIB

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._peak_mb = max(self._peak_mb, self._rss_mb())  # one float: no lock needed
            except Exception:  # the process is ending: the edges' own readings remain
                return

    def reset(self) -> None:
        self.peak_mb()
        self._peak_mb = self._rss_mb()

    def peak_mb(self) -> float:
        self._peak_mb = max(self._peak_mb, self._rss_mb())
        self.lifetime_mb = max(self.lifetime_mb, self._peak_mb)
        return self._peak_mb

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


class PhaseMemory:
    """begin() at a phase's start, end() -> its peaks; gpu_indices once the model is loaded."""

    def __init__(self, sampled: bool = False) -> None:
        """`sampled`: use the 50 ms sampler even where the kernel's mark could be reset."""
        self.rss = SampledRss() if sampled else _rss_meter()
        self.gpu_indices: list[int] = []

    @property
    def method(self) -> str:
        return self.rss.method

    def begin(self) -> None:
        self.rss.reset()
        if self.gpu_indices:
            import torch

            for index in self.gpu_indices:
                torch.cuda.reset_peak_memory_stats(index)

    def end(self) -> dict[str, float]:
        """peak_rss_mb and, on GPUs, gpu_peak_allocated_mb and gpu_peak_reserved_mb (MiB)."""
        out = {"peak_rss_mb": self.rss.peak_mb()}
        if self.gpu_indices:
            import torch

            out["gpu_peak_allocated_mb"] = sum(torch.cuda.max_memory_allocated(i) for i in self.gpu_indices) / MIB
            out["gpu_peak_reserved_mb"] = sum(torch.cuda.max_memory_reserved(i) for i in self.gpu_indices) / MIB
        return out

    def process_peak_mb(self) -> float:
        """The highest RSS of the process so far (all phases and what came before them)."""
        self.rss.peak_mb()
        return self.rss.lifetime_mb

    def close(self) -> None:
        self.rss.close()


def _rss_meter() -> HighWaterMark | SampledRss:
    try:
        return HighWaterMark()
    except (OSError, ValueError):  # not Linux, or /proc read-only: sample instead
        return SampledRss()


def _reset_high_water_mark() -> None:
    with _CLEAR_REFS.open("w") as f:
        f.write("5")


def _status_mb(field: str) -> float:
    """A `VmXXX:  1234 kB` line of /proc/self/status, in MiB."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) / 1024.0
    raise ValueError(f"/proc/self/status has no {field}")
