"""GPU energy over a part of a phase whose edges are known only afterwards (the online steady window).

Two ways, as for a whole phase: the NVML energy counter read at both edges
(the online driver reads it at every arrival, and the window's edges are
arrivals), or, without the counter, the sampled power integrated between the
edges with the power at each edge interpolated from the samples around it.
CPU and RAM energy (CodeCarbon) exist only per whole window: no sub-window.
"""

from __future__ import annotations

from llem_mlflow.energy.readings import GpuSample


def counter_energy_j(start: dict[int, float] | None, end: dict[int, float] | None) -> dict[int, float] | None:
    """Per-GPU energy between two counter readings; None when either is missing, or a counter went back
    (a driver reload restarts it) or did not advance (it updates about every 100 ms): as for a phase,
    the sampled power stands in."""
    if not start or not end or set(start) != set(end):
        return None
    energy = {gpu: end[gpu] - start[gpu] for gpu in end}
    return energy if all(joules > 0 for joules in energy.values()) else None


def power_energy_j(samples: list[GpuSample], gpu: int, start_s: float, end_s: float) -> float | None:
    """Integral of one GPU's sampled power over [start_s, end_s] (monotonic s), linear between samples.

    None unless samples lie at or before the start and at or after the end (the window must be covered)."""
    points = sorted((s.monotonic_s, s.power_w) for s in samples if s.gpu == gpu and s.power_w is not None)
    if len(points) < 2 or points[0][0] > start_s or points[-1][0] < end_s or end_s <= start_s:
        return None
    total = 0.0
    for (t0, p0), (t1, p1) in zip(points, points[1:]):
        a, b = max(t0, start_s), min(t1, end_s)
        if b <= a or t1 <= t0:
            continue
        pa = p0 + (p1 - p0) * (a - t0) / (t1 - t0)
        pb = p0 + (p1 - p0) * (b - t0) / (t1 - t0)
        total += (b - a) * (pa + pb) / 2
    return total
