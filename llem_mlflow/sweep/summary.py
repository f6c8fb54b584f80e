"""The study's results on its parent run: a table, a comparison plot, the best point per headline metric.

Built from what the children logged in MLflow (not from this process's
memory), so a resumed study summarises the runs of every session.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llem_mlflow import metrics_registry as registry
from llem_mlflow.sweep.resume import CONFIG_HASH_TAG, POINT_TAG, REPEAT_TAG, children
from llem_mlflow.sweep.study import Study
from llem_mlflow.tracking.compare import (
    ENERGY_METRIC,
    LATENCY_CURVE_METRICS,
    RATE_METRIC,
    STEADY_ENERGY_METRIC,
    THROUGHPUT_METRIC,
    ComparedRun,
    Comparison,
    plot_load_curve,
    plot_pareto,
)
from llem_mlflow.tracking.run import RunLogger

ENERGY_QUALITY = "energy_quality"  # summary.csv column: what energy/total_j rests on ("CPU+RAM estimated")
# Headline metric -> which direction is better (the metric registry's, as tag-best decides it).
HEADLINE_METRICS = {m: registry.direction(m) for m in registry.STUDY_BEST}


def summarise(client: Any, study: Study, parent_id: str, experiment_id: str, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Log summary.csv, the comparison plot and best-point metrics/tags on the parent; return the rows."""
    runs = children(client, experiment_id, parent_id)
    rows = summary_rows(study, runs)
    client.log_text(parent_id, rows_to_csv(rows), "sweep/summary.csv")
    finished = [r for r in rows if r["status"] == "FINISHED"]
    best = best_points(point_means(finished))
    parent = RunLogger(client, parent_id)
    best_metrics = {f"best/{metric}": value for metric, (_, value) in best.items()}
    for metric, (point, _) in best.items():
        interval = point_interval(finished, point, metric)
        if interval is not None:
            best_metrics[f"best/{metric}_ci95_low"], best_metrics[f"best/{metric}_ci95_high"] = interval
    parent.log_metrics(best_metrics)
    tags = {f"llem.sweep.best.{metric}": point for metric, (point, _) in best.items()}
    missing = [m for m in HEADLINE_METRICS if m not in best]
    if missing:
        tags["llem.sweep.best_missing"] = f"no finished run logged {', '.join(missing)}"
    with tempfile.TemporaryDirectory(prefix="llem-sweep-plot-") as tmp:
        plot = comparison_plot(finished, Path(tmp) / "comparison.png")
        if plot is None:
            tags["llem.sweep.plot_skipped"] = f"no finished run logged both {THROUGHPUT_METRIC} and {ENERGY_METRIC}"
        else:
            parent.log_artifact(plot, "sweep")
        curve = load_curve_plot(finished, Path(tmp) / "load_curve.png")
        if curve is not None:
            parent.log_artifact(curve, "sweep")
    parent.set_tags(tags)
    for metric, (point, value) in best.items():
        echo(f"best {metric}: {point} ({describe_best(finished, point, metric, value)})")
    return rows


def point_interval(rows: list[dict[str, Any]], point: str, metric: str) -> tuple[float, float] | None:
    """The 95% interval over trials of a point measured by one run (n_trials > 1); None otherwise
    (several repeats have several intervals: their mean has none of its own)."""
    runs = [r for r in rows if r["point"] == point]
    if len(runs) != 1 or f"{metric}_ci95_low" not in runs[0] or f"{metric}_ci95_high" not in runs[0]:
        return None
    return runs[0][f"{metric}_ci95_low"], runs[0][f"{metric}_ci95_high"]


def describe_best(rows: list[dict[str, Any]], point: str, metric: str, value: float) -> str:
    """`0.03127 J/token, 95% CI 0.029..0.0331, CPU+RAM estimated`: what the best point's figure is."""
    fmt = registry.format_number
    parts = [f"{fmt(value)} {registry.unit(metric)}".strip()]
    interval = point_interval(rows, point, metric)
    if interval is not None:
        parts.append(f"95% CI {fmt(interval[0])}..{fmt(interval[1])}")
    if registry.BY_NAME.get(metric) and registry.BY_NAME[metric].energy_of:
        notes = {r.get(ENERGY_QUALITY) for r in rows if r["point"] == point}
        if len(notes) == 1 and next(iter(notes)):
            parts.append(next(iter(notes)))
    return ", ".join(parts)


def summary_rows(study: Study, runs: list[Any]) -> list[dict[str, Any]]:
    """One row per ended child run: point, repeat, status, swept values, and for a FINISHED run every
    scalar metric it logged. A RUNNING child is not a result (alive elsewhere, or dead and not yet
    marked): left out. A FAILED or KILLED one keeps its row without figures (they are partial; its
    own run holds them)."""
    by_hash = {p.config_hash: p for p in study.points}
    rows = []
    for run in runs:
        if run.info.status in ("RUNNING", "SCHEDULED"):
            continue
        tags = run.data.tags
        point = by_hash.get(tags.get(CONFIG_HASH_TAG, ""))
        row: dict[str, Any] = {
            "point": point.name if point else tags.get(POINT_TAG, ""),
            "repeat": tags.get(REPEAT_TAG, ""),
            "status": run.info.status,
            "run_id": run.info.run_id,
            "config_hash": tags.get(CONFIG_HASH_TAG, ""),
            ENERGY_QUALITY: registry.total_energy_note(tags) or "",
        }
        for key in study.swept:
            row[key] = run.data.params.get(key, "")
        if run.info.status == "FINISHED":
            row.update({k: v for k, v in sorted(run.data.metrics.items()) if not k.startswith("timeline/")})
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns or ["point"], restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def point_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """point -> headline metric -> mean over its finished repeats (absent metrics stay absent)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for metric in HEADLINE_METRICS:
            value = row.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                sums.setdefault(row["point"], {}).setdefault(metric, []).append(float(value))
    return {p: {m: sum(v) / len(v) for m, v in ms.items()} for p, ms in sums.items()}


def best_points(means: dict[str, dict[str, float]]) -> dict[str, tuple[str, float]]:
    """headline metric -> (best point, its mean value)."""
    best: dict[str, tuple[str, float]] = {}
    for metric, direction in HEADLINE_METRICS.items():
        candidates = [(values[metric], point) for point, values in means.items() if metric in values]
        if candidates:
            value, point = (min if direction == "min" else max)(candidates)
            best[metric] = (point, value)
    return best


def comparison_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Energy per output token against throughput, one labelled marker per run, Pareto front marked
    (compare's plot); None without data."""
    plotted = [
        ComparedRun(r["run_id"], r["point"], {}, {m: r[m] for m in (THROUGHPUT_METRIC, ENERGY_METRIC)})
        for r in rows
        if THROUGHPUT_METRIC in r and ENERGY_METRIC in r
    ]
    if not plotted:
        return None
    return plot_pareto(Comparison(plotted, [], [ENERGY_METRIC, THROUGHPUT_METRIC]), path)


def load_curve_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Online studies: energy per token and latency against the achieved request rate (compare's
    load curve); None when no finished run logged a request rate."""
    metrics = (RATE_METRIC, ENERGY_METRIC, STEADY_ENERGY_METRIC, *LATENCY_CURVE_METRICS)
    plotted = [
        ComparedRun(r["run_id"], r["point"], {}, {m: r[m] for m in metrics if m in r}) for r in rows if RATE_METRIC in r
    ]
    if not plotted:
        return None
    return plot_load_curve(Comparison(plotted, [], list(metrics)), path)
