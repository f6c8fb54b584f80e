"""What each energy figure rests on: measured or estimated, per source and in total, and whether
repeated trials read the same sources (else their totals must not be averaged).

Plain functions over PhaseEnergy readings; docs/methodology.md, "Measured vs estimated".
"""

from __future__ import annotations

from typing import Any

from llem_mlflow.energy.readings import MEASURED, PhaseEnergy

# Figures that add up every source: reported over trials only when every trial measured the same sources.
TOTAL_METRICS = frozenset(
    {
        "energy/total_j",
        "energy/j_per_output_token",
        "energy/j_per_request",
        "energy/measured_j",
        "energy/measured_j_per_output_token",
        "emissions/kg_co2eq",
        # the prefill/decode split (measure.prefill_split) adds up the same sources
        "energy/prefill_j",
        "energy/j_per_input_token",
        "energy/decode_j",
        "energy/j_per_decode_token",
    }
)
# Figures of one source: reported over trials only when every trial measured that source the same way.
SOURCE_METRIC_PREFIXES = {
    "gpu": ("energy/gpu", "energy/dynamic_j", "power/gpu_mean_w", "power/gpu_peak_w"),
    "cpu": ("energy/cpu_j",),
    "ram": ("energy/ram_j",),
}


def with_failures(method: str, failures: list[tuple[str, str]]) -> str:
    """The method, then the windows where it failed: `nvml_counter; measure/2: unavailable: GpuIsLost`."""
    return "; ".join([method, *(f"{phase}: unavailable: {reason}" for phase, reason in failures)])


def quality_tags(measured: list[PhaseEnergy]) -> dict[str, str]:
    """llem.energy.<source>_quality, total_quality and total_sources over the measured windows."""
    per_window = [r.sources for r in measured]
    tags = {}
    for name in ("gpu", "cpu", "ram"):
        qualities = [sources[name].quality if name in sources else "absent" for sources in per_window]
        if all(q == "absent" for q in qualities):
            continue
        if len(set(qualities)) == 1:
            tags[f"llem.energy.{name}_quality"] = qualities[0]
        else:
            tags[f"llem.energy.{name}_quality"] = "varies by trial: " + ", ".join(
                f"{r.phase} {q}" for r, q in zip(measured, qualities)
            )
    if differing_sources(measured):
        tags["llem.energy.total_sources"] = "; ".join(f"{r.phase}: {'+'.join(r.sources) or 'none'}" for r in measured)
        tags["llem.energy.total_quality"] = "varies by trial (see llem.warning.mixed_sources)"
    else:
        tags["llem.energy.total_sources"] = "+".join(per_window[0]) or "none"
        tags["llem.energy.total_quality"] = total_quality(per_window[0])
    return tags


def total_quality(sources: dict[str, Any]) -> str:
    """measured | estimated | mixed: gpu measured, cpu+ram estimated | unavailable: ..."""
    if not sources:
        return "unavailable: no energy source was measured"
    by_quality: dict[str, list[str]] = {}
    for name, source in sources.items():
        by_quality.setdefault(source.quality, []).append(name)
    if len(by_quality) == 1:
        return next(iter(by_quality))
    order = sorted(by_quality, key=lambda q: q != MEASURED)
    return "mixed: " + ", ".join(f"{'+'.join(by_quality[q])} {q}" for q in order)


def differing_sources(measured: list[PhaseEnergy]) -> set[str]:
    """The sources that not every measured window read with the same meter (or at all)."""
    meters = [{name: s.meter for name, s in r.sources.items()} for r in measured]
    names = {name for m in meters for name in m}
    return {name for name in names if len({m.get(name) for m in meters}) > 1}


def mixed_sources(measured: list[PhaseEnergy]) -> str | None:
    """Which trial lost (or changed) which source against trial 1; None when every trial matches."""
    if not differing_sources(measured):
        return None
    first = measured[0].sources
    changes = []
    for trial, reading in enumerate(measured, start=1):
        sources = reading.sources
        parts = []
        for name in ("gpu", "cpu", "ram"):
            before, now = first.get(name), sources.get(name)
            if trial > 1 and before is not None and now is None:
                parts.append(f"lost {name} ({_missing_reason(reading, name)})")
            elif trial > 1 and before is None and now is not None:
                parts.append(f"gained {name} ({now.meter})")
            elif before is not None and now is not None and before.meter != now.meter:
                parts.append(f"{name} by {now.meter} instead of {before.meter}")
        if parts:
            changes.append(f"trial {trial} ({reading.phase}) {', '.join(parts)}")
    return (
        "the trials did not measure the same energy sources, so totals and per-token figures over trials "
        f"are left out (each trial's own figures are in trial/*): {'; '.join(changes)}"
    )


def _missing_reason(reading: PhaseEnergy, name: str) -> str:
    if name == "gpu":
        return reading.gpu_reason or "no reading"
    cpu_reason = reading.host.cpu_reason if reading.host is not None and name == "cpu" else None
    return reading.rapl_reason or reading.host_reason or cpu_reason or "no reading"
