"""Validity warnings for a measured window: each becomes the tag llem.warning.<name>.

Each check returns a short explanation, or None when the window is fine.
`docs/methodology.md` explains why each one matters.
"""

from __future__ import annotations

from llem_mlflow.energy.readings import GpuSample


MAX_TEMPERATURE_RISE_C = 10.0
# NVML clocks-event reasons that mean the GPU slowed down against our will.
THROTTLE_REASONS = {
    0x04: "software power cap",
    0x08: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}


def short_window(duration_s: float, min_s: float, why: str) -> str | None:
    """The window is shorter than the meters support (`min_s`, the default of measure.min_duration_s)."""
    if duration_s >= min_s:
        return None
    return (
        f"measured window {duration_s:.3f} s < {min_s:g} s ({why}): edge effects weigh more than the "
        "meters allow; raise measure.min_duration_s (or leave it unset), or measure more prompts"
    )


def throttling(samples: list[GpuSample]) -> str | None:
    seen: dict[int, set[str]] = {}
    for s in samples:
        for bit, name in THROTTLE_REASONS.items():
            if s.throttle_reasons is not None and s.throttle_reasons & bit:
                seen.setdefault(s.gpu, set()).add(name)
    if not seen:
        return None
    parts = [f"GPU {gpu}: {', '.join(sorted(names))}" for gpu, names in sorted(seen.items())]
    return "clocks were throttled during the window (" + "; ".join(parts) + "): energy and latency reflect a slowed GPU"


def temperature_rise(samples: list[GpuSample]) -> str | None:
    rises = {}
    for gpu in sorted({s.gpu for s in samples}):
        temps = [s.temperature_c for s in samples if s.gpu == gpu and s.temperature_c is not None]
        if temps and max(temps) - temps[0] > MAX_TEMPERATURE_RISE_C:
            rises[gpu] = max(temps) - temps[0]
    if not rises:
        return None
    parts = ", ".join(f"GPU {gpu} +{rise:.0f} C" for gpu, rise in rises.items())
    return (
        f"temperature rose more than {MAX_TEMPERATURE_RISE_C:.0f} C during the window ({parts}): "
        "a hotter GPU leaks more power, so runs that start cold and warm are not comparable; enable cooldown"
    )


def other_processes(pids_by_gpu: dict[int, list[int] | None], own_pids: set[int]) -> str | None:
    """Other compute processes share the GPU, so its energy is not ours alone.

    `own_pids`: this process and the ones it started (data-parallel ranks). In a container
    NVML may report host PIDs, where none of ours appears: then one process is taken to
    be us and only more than one is a warning.
    """
    crowded = {}
    for gpu, pids in sorted(pids_by_gpu.items()):
        if pids is None:
            continue
        unique = sorted(set(pids))
        if own_pids & set(unique):
            others = [p for p in unique if p not in own_pids]
            if others:
                crowded[gpu] = f"PIDs {', '.join(map(str, others))}"
        elif len(unique) > 1:  # one of these unknown PIDs is ourselves, seen from outside the PID namespace
            crowded[gpu] = f"{len(unique) - 1} other(s) among PIDs {', '.join(map(str, unique))}"
    if not crowded:
        return None
    parts = "; ".join(f"GPU {gpu}: {text}" for gpu, text in crowded.items())
    return f"other processes ran on the measured GPU(s) ({parts}): the GPU energy includes their work"


def persistence_mode_off(persistence_by_gpu: dict[int, bool | None]) -> str | None:
    off = [gpu for gpu, enabled in sorted(persistence_by_gpu.items()) if enabled is False]
    if not off:
        return None
    return (
        f"persistence mode is off on GPU(s) {', '.join(map(str, off))}: the driver may unload between runs, "
        "so idle power and first-call latency vary; enable it with `nvidia-smi -pm 1`"
    )
