"""One table of the metrics users read first: name, unit, which direction is better, role.

Every place that picks, orders, labels or ranks metrics reads it: the CLI's summary line,
`compare`, `tag-best`, the sweep summary, trial statistics and the registry's version tags.
Plain data, no imports beyond the standard library (the CLI's start-up path uses it).

The full list of names and their definitions is docs/metrics.md; this table holds the
headline subset plus the rules (unit and direction) that apply to every metric name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    better: str | None  # "min" (lower is better), "max" (higher is better) or None (no order)
    label: str  # short words for the CLI, e.g. "TTFT p50"
    column: str  # a narrow table header, unit included, e.g. "TTFT p50 ms" (compare's default table)
    headline: bool = False  # shown first: CLI summary, compare's default columns, logged first
    trial_spread: bool = False  # gets _std, _ci95_low/_high, _cv over trials
    energy_of: str | None = None  # the sources an energy figure adds up: total | measured | gpu | cpu | ram


# In display order: the headline figures first.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "energy/j_per_output_token", "J/token", "min", "energy per output token", "J/token",
        headline=True, trial_spread=True, energy_of="total",
    ),  # fmt: skip
    MetricSpec("throughput/output_tokens_per_s", "tokens/s", "max", "throughput", "tokens/s", headline=True, trial_spread=True),
    MetricSpec("latency/ttft_ms_p50", "ms", "min", "TTFT p50", "TTFT p50 ms", headline=True, trial_spread=True),
    MetricSpec("latency/e2e_ms_p50", "ms", "min", "end-to-end p50", "e2e p50 ms", headline=True),
    MetricSpec(
        "energy/measured_j_per_output_token", "J/token", "min", "measured energy per output token", "measured J/token",
        energy_of="measured",
    ),  # fmt: skip
    MetricSpec("energy/gpu_j_per_output_token", "J/token", "min", "GPU energy per output token", "GPU J/token", energy_of="gpu"),
    MetricSpec("energy/total_j", "J", "min", "total energy", "total J", energy_of="total"),
    MetricSpec("energy/measured_j", "J", "min", "measured energy", "measured J", energy_of="measured"),
    MetricSpec("energy/gpu_j", "J", "min", "GPU energy", "GPU J", energy_of="gpu"),
    MetricSpec("energy/gpu_dynamic_j", "J", "min", "GPU dynamic energy", "GPU dyn. J", energy_of="gpu"),
    MetricSpec("energy/cpu_j", "J", "min", "CPU energy", "CPU J", energy_of="cpu"),
    MetricSpec("energy/ram_j", "J", "min", "RAM energy", "RAM J", energy_of="ram"),
    MetricSpec("emissions/kg_co2eq", "kg CO2eq", "min", "emissions", "kg CO2eq", energy_of="total"),
    MetricSpec("latency/itl_ms_p50", "ms", "min", "inter-token p50", "ITL p50 ms"),
    # scenario: online (absent from offline runs, so their columns appear only when one run has them)
    MetricSpec("load/achieved_requests_per_s", "requests/s", "max", "achieved request rate", "achieved req/s"),
    MetricSpec(
        "energy/steady_j_per_output_token", "J/token", "min", "steady-state energy per output token", "steady J/token",
        energy_of="gpu",
    ),
    MetricSpec("load/goodput_requests_per_s", "requests/s", "max", "goodput", "goodput req/s"),
    MetricSpec("latency/tpot_ms_p50", "ms", "min", "TPOT p50", "TPOT p50 ms"),
    MetricSpec("memory/gpu_peak_allocated_mb", "MiB", "min", "GPU peak allocated", "GPU peak MiB"),
    MetricSpec("memory/process_peak_rss_mb", "MiB", "min", "process peak RSS", "RSS peak MiB"),
)
BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}

HEADLINE: tuple[str, ...] = tuple(s.name for s in METRICS if s.headline)
TRIAL_SPREAD: tuple[str, ...] = tuple(s.name for s in METRICS if s.trial_spread)
# The figures a registered model version is tagged with and compare shows by default.
KEY: tuple[str, ...] = tuple(s.name for s in METRICS)
# The study summary's "best point" figures.
STUDY_BEST: tuple[str, ...] = (*HEADLINE[:3], "emissions/kg_co2eq")

ENERGY_PER_TOKEN = "energy/j_per_output_token"
THROUGHPUT = "throughput/output_tokens_per_s"
REQUEST_RATE = "load/achieved_requests_per_s"  # the x axis of an online load curve
STEADY_ENERGY_PER_TOKEN = "energy/steady_j_per_output_token"

# Better is lower for costs, higher for rates: decided by the group (the part before "/").
LOWER_IS_BETTER_GROUPS = frozenset({"energy", "emissions", "latency", "memory", "power", "time"})
HIGHER_IS_BETTER_GROUPS = frozenset({"throughput", "load"})

# Unit from the name's suffix, most specific first (docs/metrics.md: the unit is in the name).
_SUFFIX_UNITS = (
    (r"_cv$", ""),  # std / mean: no unit, whatever the figure's own
    (r"tokens_per_s$", "tokens/s"),
    (r"requests_per_s$", "requests/s"),
    (r"[/_]j_per_\w*token$", "J/token"),
    (r"[/_]j_per_request$", "J/request"),
    (r"kg_co2eq$", "kg CO2eq"),
    (r"_g_per_kwh$", "g/kWh"),
    (r"_j$", "J"),
    (r"_w$", "W"),
    (r"_ms(_\w+)?$", "ms"),
    (r"_s$", "s"),
    (r"_mb$", "MiB"),
    (r"_c$", "C"),
    (r"_pct$", "%"),
)


def unit(name: str) -> str:
    """The unit of a metric: from the table, else from the name's suffix, else ''."""
    if name in BY_NAME:
        return BY_NAME[name].unit
    return next((text for pattern, text in _SUFFIX_UNITS if re.search(pattern, name)), "")


def direction(name: str) -> str | None:
    """'min' when lower is better, 'max' when higher is better, None when nothing says."""
    if name in BY_NAME:
        return BY_NAME[name].better
    group = name.split("/", 1)[0]
    if group in LOWER_IS_BETTER_GROUPS:
        return "min"
    if group in HIGHER_IS_BETTER_GROUPS:
        return "max"
    return None


def display_order(names: list[str] | set[str] | dict) -> list[str]:
    """Table metrics first in table order, then the rest by name (the order a run logs them)."""
    names = set(names)
    first = [n for n in KEY if n in names]
    return first + sorted(names - set(first))


def format_number(value: float, digits: int = 4) -> str:
    """Plain decimal with `digits` significant digits: 11350, 13.45, 0.03127 (never 1.135e+04)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def describe(name: str, value: float, tags: dict[str, str] | None = None) -> str:
    """`0.03127 J/token energy per output token (CPU+RAM estimated)` style words for the CLI."""
    spec = BY_NAME.get(name)
    words = spec.label if spec else name
    note = energy_note(name, tags or {})
    return f"{format_number(value)} {unit(name)} {words}".replace("  ", " ") + (f" ({note})" if note else "")


# The run tags that say how each energy source was read (see docs/methodology.md, "Measured vs estimated").
TOTAL_QUALITY_TAG = "llem.energy.total_quality"
TOTAL_SOURCES_TAG = "llem.energy.total_sources"
ENERGY_SOURCES = ("gpu", "cpu", "ram")


def quality_tag(source: str) -> str:
    return f"llem.energy.{source}_quality"


def energy_note(name: str, tags: dict[str, str]) -> str | None:
    """What an energy figure rests on, from the run's tags: "CPU+RAM estimated", "GPU measured,
    CPU+RAM estimated", "GPU measured"; None for other metrics or runs without the tags."""
    spec = BY_NAME.get(name)
    if spec is None or spec.energy_of is None:
        return None
    if spec.energy_of == "total":
        return total_energy_note(tags)
    if spec.energy_of == "measured":
        measured = [s for s in ENERGY_SOURCES if tags.get(quality_tag(s)) == "measured"]
        return f"{'+'.join(measured).upper()} measured" if measured else None
    quality = tags.get(quality_tag(spec.energy_of))
    return f"{spec.energy_of.upper()} {quality}" if quality else None


def total_energy_note(tags: dict[str, str]) -> str | None:
    """The quality of energy/total_j and what is derived from it (J/token, emissions) in a few words."""
    quality = tags.get(TOTAL_QUALITY_TAG)
    sources = tags.get(TOTAL_SOURCES_TAG, "")
    if not quality:
        return None
    if quality in ("measured", "estimated") and sources:
        return f"{sources.upper()} {quality}"
    if quality.startswith("mixed: "):  # "mixed: gpu measured, cpu+ram estimated"
        parts = [part.split(" ", 1) for part in quality[len("mixed: ") :].split(", ")]
        return ", ".join(f"{part[0].upper()} {part[1]}" for part in parts if len(part) == 2)
    return quality
