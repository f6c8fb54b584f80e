"""The sampler's data as metric histories, a table, and the power plot.

The metric histories hold at most MAX_POINTS points per series (an 8-GPU hour at 100 ms would
otherwise be 1.4 M points in the tracking store): runs of consecutive samples are averaged into
one point. The table artifact keeps every sample.
"""

from __future__ import annotations

from pathlib import Path

from llem_mlflow.energy.readings import GpuSample

# GpuSample field -> metric suffix (timeline/gpu<i>_<suffix>)
FIELDS = {
    "power_w": "power_w",
    "temperature_c": "temperature_c",
    "sm_clock_mhz": "sm_clock_mhz",
    "memory_used_mb": "memory_used_mb",
    "utilization_pct": "utilization_pct",
}
COLUMNS = ["timestamp_ms", "gpu", *FIELDS, "throttle_reasons"]
MAX_POINTS = 1000


def metric_histories(samples: list[GpuSample], max_points: int = MAX_POINTS) -> dict[str, list[tuple[int, float]]]:
    """timeline/gpu<i>_<field> -> [(timestamp_ms, value)] in time order, at most max_points per series;
    fields the driver did not report left out."""
    histories: dict[str, list[tuple[int, float]]] = {}
    for s in sorted(samples, key=lambda s: (s.timestamp_ms, s.monotonic_s)):
        for field, suffix in FIELDS.items():
            value = getattr(s, field)
            if value is not None:
                histories.setdefault(f"timeline/gpu{s.gpu}_{suffix}", []).append((s.timestamp_ms, float(value)))
    return {name: downsample(points, max_points) for name, points in histories.items()}


def downsample(points: list[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    """At most max_points: the series cut into max_points runs of consecutive points (lengths differ
    by at most one), each replaced by its mean time and mean value (which keeps the mean power)."""
    n = len(points)
    if n <= max_points:
        return points
    out = []
    for k in range(max_points):
        run = points[k * n // max_points : (k + 1) * n // max_points]
        out.append((round(sum(t for t, _ in run) / len(run)), sum(v for _, v in run) / len(run)))
    return out


def downsampling_note(samples: list[GpuSample], max_points: int = MAX_POINTS) -> str | None:
    """What the llem.timeline.downsampled tag says, or None when every series fits."""
    per_gpu = max((sum(1 for s in samples if s.gpu == gpu) for gpu in {s.gpu for s in samples}), default=0)
    if per_gpu <= max_points:
        return None
    return (
        f"timeline/* metric histories average runs of ~{per_gpu / max_points:.1f} consecutive samples into one point "
        f"({per_gpu} samples per GPU -> {max_points} points); every sample is in the artifact timeline.parquet"
    )


def write_table(samples: list[GpuSample], directory: Path) -> Path:
    """timeline.parquet (or timeline.csv without pyarrow): one row per GPU per tick."""
    import pandas as pd

    ordered = sorted(samples, key=lambda s: (s.timestamp_ms, s.monotonic_s))
    frame = pd.DataFrame([[getattr(s, c) for c in COLUMNS] for s in ordered], columns=COLUMNS)
    try:
        path = directory / "timeline.parquet"
        frame.to_parquet(path, index=False)
    except ImportError:
        path = directory / "timeline.csv"
        frame.to_csv(path, index=False)
    return path


def plot_power(
    samples: list[GpuSample],
    phases: dict[str, tuple[int, int]],
    baseline_w: dict[int, float],
    path: Path,
) -> Path:
    """Power per GPU over time; phases shaded and labelled; idle baseline as a dashed line per GPU."""
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # Agg: no display, no global pyplot state
    )
    from matplotlib.figure import Figure

    t0 = min(s.timestamp_ms for s in samples)
    figure = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for gpu in sorted({s.gpu for s in samples}):
        points = [((s.timestamp_ms - t0) / 1000, s.power_w) for s in samples if s.gpu == gpu and s.power_w is not None]
        if points:
            line = axes.plot(*zip(*points), label=f"GPU {gpu}", linewidth=1)[0]
            if gpu in baseline_w:
                axes.axhline(baseline_w[gpu], color=line.get_color(), linestyle="--", linewidth=1, label=f"GPU {gpu} idle baseline")
    colours = ["#dddddd", "#c6dbef", "#fdd0a2", "#c7e9c0", "#dadaeb"]
    for n, (phase, (start_ms, end_ms)) in enumerate(phases.items()):
        start, end = (start_ms - t0) / 1000, (end_ms - t0) / 1000
        axes.axvspan(start, end, color=colours[n % len(colours)], alpha=0.5, linewidth=0)
        axes.text(start, 1.0, phase, transform=axes.get_xaxis_transform(), va="bottom", fontsize=8)
    axes.set_xlabel("time since first sample (s)")
    axes.set_ylabel("power (W)")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
