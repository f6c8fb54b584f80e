"""Pick the best version of a registered model for one metric on one kind of hardware.

Reads each version's results per hardware key (registry.version_results: its LoggedModel's
metrics of the run recorded for that hardware, or the `llem.hw.<hw>.*` tags of versions
registered the old way), so a version counts for the hardware it was measured on and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llem_mlflow import metrics_registry as registry
from llem_mlflow.errors import TrackingError
from llem_mlflow.metrics_registry import format_number, unit
from llem_mlflow.tracking import version_tags as vt
from llem_mlflow.tracking.registry import check_alias, quote, search_all, set_alias, version_results

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class RankedVersion:
    version: str
    value: float
    device_name: str
    device_count: int | None
    run_id: str | None
    energy_quality: str | None = None  # what the run's energy/total_j rests on ("CPU+RAM estimated")


@dataclass(frozen=True)
class Ranking:
    name: str
    metric: str
    direction: str  # "min" | "max"
    entries: list[RankedVersion]  # best first
    not_measured: list[str]  # versions measured on the hardware but without this metric
    alias: str | None = None

    @property
    def best(self) -> RankedVersion:
        return self.entries[0]


def rank_versions(
    client: MlflowClient,
    name: str,
    metric: str,
    device_name: str | None = None,
    device_count: int | None = None,
    direction: str | None = None,
) -> Ranking:
    """Rank the versions of `name` by `metric` measured on `device_name` (x `device_count`)."""
    direction = direction or vt.metric_direction(metric)
    if direction not in ("min", "max"):
        raise TrackingError(
            f"cannot tell whether a higher or lower {metric} is better: pass --direction min or --direction max"
        )
    results = _hardware_results(client, name)
    if device_name is not None:
        wanted = vt.name_slug(device_name)
        results = [(v, r) for v, r in results if r.slug.rsplit("-x", 1)[0] == wanted]
    if device_count is not None:
        results = [(v, r) for v, r in results if r.device_count == device_count]
    hardware = sorted({(r.device_name or r.slug, r.device_count) for _, r in results}, key=str)
    if not results:
        where = f" on {device_name!r}" + (f" x {device_count}" if device_count else "") if device_name else ""
        raise TrackingError(f"no version of {name!r} has results{where}: run a benchmark first (or check --gpu)")
    if len(hardware) > 1:
        listed = "; ".join(f"{n} x {c}" for n, c in hardware)
        raise TrackingError(
            f"versions of {name!r} were measured on several kinds of hardware ({listed}); "
            "results from different hardware are not comparable: pick one with --gpu NAME [--gpu-count N]"
        )
    entries = [
        RankedVersion(v, r.metrics[metric], r.device_name or r.slug, r.device_count, r.run_id, r.energy_quality)
        for v, r in results
        if metric in r.metrics
    ]
    not_measured = sorted({v for v, r in results if metric not in r.metrics}, key=int)
    if not entries:
        known = sorted({m for _, r in results for m in r.metrics})
        raise TrackingError(f"no version of {name!r} has {metric} on that hardware; tagged metrics: {', '.join(known)}")
    # Best first; ties go to the newer version.
    sign = 1 if direction == "min" else -1
    entries.sort(key=lambda e: (sign * e.value, -int(e.version)))
    return Ranking(name, metric, direction, entries, not_measured)


def tag_best(
    client: MlflowClient,
    name: str,
    metric: str,
    alias: str,
    device_name: str | None = None,
    device_count: int | None = None,
    direction: str | None = None,
) -> Ranking:
    """Move `alias` to the best version (see rank_versions) and return the ranking."""
    check_alias(alias)  # before ranking: a refused alias costs nothing
    ranking = rank_versions(client, name, metric, device_name, device_count, direction)
    set_alias(client, name, alias, ranking.best.version)
    return Ranking(ranking.name, metric, ranking.direction, ranking.entries, ranking.not_measured, alias)


def _hardware_results(client: MlflowClient, name: str) -> list[tuple[str, vt.HardwareResult]]:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise TrackingError(f"no registered model named {name!r} at {client._registry_uri}") from None
    versions = search_all(client.search_model_versions, f"name = '{quote(name)}'")
    return [(str(v.version), result) for v in versions for result in version_results(client, v).values()]


def format_ranking(ranking: Ranking) -> str:
    better = "lower" if ranking.direction == "min" else "higher"
    lines = [f"{ranking.name}: {ranking.metric} [{unit(ranking.metric)}] ({better} is better)".replace(" []", "")]
    spec = registry.BY_NAME.get(ranking.metric)
    quality = spec is not None and spec.energy_of == "total"  # a total figure: say what each rests on
    lines.append(f"{'rank':>4}  {'version':>7}  {'value':>14}  {'hardware':<32}  " + ("energy quality".ljust(34) + "  " if quality else "") + "run")
    for rank, e in enumerate(ranking.entries, 1):
        hardware = f"{e.device_name} x {e.device_count}" if e.device_count else e.device_name
        note = f"{(e.energy_quality or 'unknown'):<34}  " if quality else ""
        lines.append(f"{rank:>4}  {e.version:>7}  {format_number(e.value):>14}  {hardware:<32}  {note}{e.run_id or ''}")
    notes = {e.energy_quality for e in ranking.entries} if quality else set()
    if len(notes) > 1:
        lines.append("note: the versions' energy figures rest on different sources or qualities; compare like with like")
    if ranking.not_measured:
        lines.append(f"not measured: version(s) {', '.join(ranking.not_measured)}")
    if ranking.alias:
        lines.append(f"alias {ranking.alias!r} -> version {ranking.best.version}")
    return "\n".join(lines)
