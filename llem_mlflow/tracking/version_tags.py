"""Which run is a model's result on each kind of hardware: the hardware-keyed tag scheme.

Set on the LoggedModel whose metrics hold the figures (registry.link_results):

    llem.hw.<hw>.run_id           the run whose figures are the result on <hw>
    llem.hw.<hw>.device_name      the device name as the run recorded it
    llem.hw.<hw>.device_count     the number of devices
    llem.hw.<hw>.config_hash      that run's config hash
    llem.hw.<hw>.energy_quality   what that run's energy/total_j rests on, e.g. "CPU+RAM estimated"

A version without a LoggedModel (and every version registered before the figures moved to
the LoggedModel) carries the same keys as version tags, plus the headline figures:

    llem.hw.<hw>.<group>.<name>   a headline metric `<group>/<name>` measured on <hw>

<hw> is a slug of the device name plus the device count, e.g.
"NVIDIA H100 80GB HBM3" x 1 -> `nvidia-h100-80gb-hbm3-x1`. It holds no ".",
so the first "." after `llem.hw.` ends it. An H100 result and an A100 result
live under different keys; a newer run on the same hardware replaces the older.

No torch and no mlflow import here: plain strings in, plain strings out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from llem_mlflow import metrics_registry as registry

HW_PREFIX = "llem.hw."

# Headline metrics a version without a LoggedModel is tagged with (when the run measured them), with units.
HEADLINE_METRICS: dict[str, str] = {name: registry.unit(name) for name in registry.KEY}

# Run tags of the run contract.
TAG_MODEL = "llem.model"
TAG_CONFIG_HASH = "llem.config_hash"
TAG_DEVICE_NAME = "llem.device.name"
TAG_DEVICE_COUNT = "llem.device.count"


def hardware_slug(device_name: str, device_count: int | str) -> str:
    """`NVIDIA H100 80GB HBM3`, 2 -> `nvidia-h100-80gb-hbm3-x2` (lowercase, [a-z0-9-] only)."""
    return f"{name_slug(device_name)}-x{int(device_count)}"


def name_slug(device_name: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", " ", device_name.lower())  # Intel(R) Xeon(R) -> intel xeon
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return slug or "unknown"


def metric_tag_suffix(metric: str) -> str:
    """`energy/j_per_output_token` -> `energy.j_per_output_token` (MLflow tag keys read better dotted)."""
    return metric.replace("/", ".")


def hw_tag_key(slug: str, field_name: str) -> str:
    return f"{HW_PREFIX}{slug}.{field_name}"


def format_value(value: float) -> str:
    """repr() round-trips a float exactly."""
    return repr(float(value))


metric_direction = registry.direction


@dataclass
class HardwareResult:
    """What one version measured on one kind of hardware, read back from its tags."""

    slug: str
    device_name: str | None = None
    device_count: int | None = None
    run_id: str | None = None
    config_hash: str | None = None
    energy_quality: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def hardware_tags(run_tags: dict[str, str], run_id: str) -> dict[str, str]:
    """Which run is the result on its hardware: `llem.hw.<hw>.{device_name,device_count,run_id,config_hash,energy_quality}`.

    Set on the LoggedModel whose metrics hold that run's figures (registry.link_results)."""
    slug = hardware_slug(*run_hardware(run_tags))
    tags = {
        hw_tag_key(slug, "device_name"): run_tags[TAG_DEVICE_NAME],
        hw_tag_key(slug, "device_count"): str(int(run_tags[TAG_DEVICE_COUNT])),
        hw_tag_key(slug, "run_id"): run_id,
    }
    if TAG_CONFIG_HASH in run_tags:
        tags[hw_tag_key(slug, "config_hash")] = run_tags[TAG_CONFIG_HASH]
    quality = registry.total_energy_note(run_tags)
    if quality:
        tags[hw_tag_key(slug, "energy_quality")] = quality
    return tags


def results_tags(run_tags: dict[str, str], run_metrics: dict[str, float], run_id: str) -> dict[str, str]:
    """The hardware tags plus the headline figures as tags: the scheme for a version without a LoggedModel."""
    tags = hardware_tags(run_tags, run_id)
    slug = hardware_slug(*run_hardware(run_tags))
    for metric in HEADLINE_METRICS:
        value = run_metrics.get(metric)
        if value is not None and math.isfinite(value):
            tags[hw_tag_key(slug, metric_tag_suffix(metric))] = format_value(value)
    return tags


def run_hardware(run_tags: dict[str, str]) -> tuple[str, int]:
    """(device name, device count) from a run's tags; ValueError naming the missing tag."""
    for key in (TAG_DEVICE_NAME, TAG_DEVICE_COUNT):
        if not run_tags.get(key):
            raise ValueError(f"the run has no {key} tag (runs made by `llem-mlflow run` carry it)")
    try:
        count = int(run_tags[TAG_DEVICE_COUNT])
    except ValueError:
        raise ValueError(f"the run's {TAG_DEVICE_COUNT} tag is {run_tags[TAG_DEVICE_COUNT]!r}, not a whole number") from None
    return run_tags[TAG_DEVICE_NAME], count


def parse_hardware_results(tags: dict[str, Any]) -> dict[str, HardwareResult]:
    """Read `llem.hw.*` tags (a LoggedModel's or a version's) back into one HardwareResult per hardware slug."""
    results: dict[str, HardwareResult] = {}
    for key, raw in tags.items():
        if not key.startswith(HW_PREFIX):
            continue
        slug, _, field_name = key[len(HW_PREFIX) :].partition(".")
        if not slug or not field_name:
            continue
        result = results.setdefault(slug, HardwareResult(slug=slug))
        if field_name == "device_name":
            result.device_name = raw
        elif field_name == "device_count":
            result.device_count = _int_or_none(raw)
        elif field_name == "run_id":
            result.run_id = raw
        elif field_name == "config_hash":
            result.config_hash = raw
        elif field_name == "energy_quality":
            result.energy_quality = raw
        elif "." in field_name:
            value = _float_or_none(raw)
            if value is not None:
                result.metrics[field_name.replace(".", "/", 1)] = value
    return results


def _int_or_none(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def _float_or_none(raw: Any) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None
