"""Was the machine quiet? CPU time of this process against everyone else's over a measured window.

Two snapshots, one at each edge of the window (no thread runs inside it):
system-wide busy CPU seconds from /proc/stat (psutil.cpu_times) and the CPU
seconds of this process and its live children (psutil). Their difference is
the CPU time every other process used. Shares are of the machine's capacity
(window x logical CPUs), so 100% means every core busy for the whole window.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from llem_mlflow.energy.readings import CpuLoad

# Other processes using more than this share of the machine's CPU capacity during a window make
# llem.warning.cpu_contention. A quiet machine's background (daemons, the shell) stays near 1-3%;
# 10% is one core of a 10-core machine busy with someone else's work for the whole window.
MAX_OTHERS_CPU_PCT = 10.0


@dataclass(frozen=True)
class CpuSnapshot:
    monotonic_s: float
    busy_s: float  # non-idle CPU seconds of the whole machine, all cores, since boot
    own_s: float  # CPU seconds of this process and its live children
    n_cpus: int


def snapshot() -> CpuSnapshot:
    import psutil

    system = psutil.cpu_times()
    # guest time is already inside user time on Linux; idle and iowait are not work
    busy = sum(getattr(system, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
    return CpuSnapshot(time.monotonic(), busy, _own_cpu_s(psutil), psutil.cpu_count() or 1)


def _own_cpu_s(psutil) -> float:
    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, and the children that ended and were waited for
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # a child that ended during the window: its time is in children_* once waited for
    return total


def cpu_load(before: CpuSnapshot, after: CpuSnapshot) -> CpuLoad | None:
    """The window's CPU shares; None for a window too short to tell (under one clock tick)."""
    duration = after.monotonic_s - before.monotonic_s
    if duration <= 0.01:
        return None
    capacity = duration * after.n_cpus
    own = after.own_s - before.own_s
    others = (after.busy_s - before.busy_s) - own
    return CpuLoad(
        duration_s=duration,
        n_cpus=after.n_cpus,
        own_pct=100.0 * own / capacity,
        others_pct=max(0.0, 100.0 * others / capacity),
        load_1m=os.getloadavg()[0],
    )


def cpu_contention(load: CpuLoad | None, max_others_pct: float = MAX_OTHERS_CPU_PCT) -> str | None:
    """The warning text when other processes used more than max_others_pct of the CPU, else None."""
    if load is None or load.others_pct <= max_others_pct:
        return None
    return (
        f"other processes used {load.others_pct:.0f}% of the CPU capacity (this run {load.own_pct:.0f}%; "
        f"load average {load.load_1m:.1f} on {load.n_cpus} CPUs; threshold {max_others_pct:g}%): "
        "they slowed this run, and machine-wide energy figures include their work"
    )
