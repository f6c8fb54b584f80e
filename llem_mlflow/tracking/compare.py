"""Compare benchmark runs: the params that differ and the key metrics, with units.

`load_comparison` reads runs (an experiment's, or given ids) into a `Comparison`;
`render` writes it as table, csv, json or markdown; `plot_pareto` draws energy per
token against throughput with the Pareto front; `log_summary_run` logs all of it
to a new summary run. No torch; mlflow and matplotlib are imported inside functions.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llem_mlflow import metrics_registry as registry
from llem_mlflow.metrics_registry import format_number
from llem_mlflow.errors import TrackingError
from llem_mlflow.redact import redact_uri
from llem_mlflow.tracking import version_tags as vt
from llem_mlflow.tracking.registry import get_run, search_all

if TYPE_CHECKING:
    from mlflow import MlflowClient

FORMATS = ("table", "csv", "json", "markdown")
TABLE_WIDTH = 100  # the default table fits a terminal this wide; --wide shows every column
MAX_CELL = 32  # longer names and values lose their middle ("...") in the default table
ENERGY_METRIC = registry.ENERGY_PER_TOKEN
THROUGHPUT_METRIC = registry.THROUGHPUT
RATE_METRIC = registry.REQUEST_RATE
STEADY_ENERGY_METRIC = registry.STEADY_ENERGY_PER_TOKEN
LATENCY_CURVE_METRICS = ("latency/ttft_ms_p50", "latency/tpot_ms_p50")
# What the x axis of compare's plot can be: the Pareto plot, or the online load curve.
X_AXES = ("throughput", "request-rate")
# Key metrics, in display order, with units (a column appears when at least one run has it).
KEY_METRICS: dict[str, str] = {name: registry.unit(name) for name in registry.KEY}
# Summary runs carry this tag, so a later `compare --experiment` leaves them out.
TAG_SUMMARY = "llem.compare.summary"
TAG_COMPARED_RUNS = "llem.compare.run_ids"
MISSING = "-"


ENERGY_QUALITY_COLUMN = "energy quality"


@dataclass
class ComparedRun:
    run_id: str
    run_name: str
    params: dict[str, str]
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> 95% CI over trials
    energy_quality: str | None = None  # what energy/total_j rests on, e.g. "CPU+RAM estimated"


@dataclass
class Comparison:
    runs: list[ComparedRun]
    differing_params: list[str]
    metrics: list[str]  # key metrics present in at least one run

    @property
    def shows_energy_quality(self) -> bool:
        return any(r.energy_quality for r in self.runs)

    def header(self) -> list[str]:
        quality = [ENERGY_QUALITY_COLUMN] if self.shows_energy_quality else []
        return ["run", *self.differing_params, *(metric_label(m) for m in self.metrics), *quality]

    def rows(self, missing: str = MISSING) -> list[list[str]]:
        quality = self.shows_energy_quality
        return [
            [
                run.run_name,
                *(run.params.get(p, missing) for p in self.differing_params),
                *(_format_cell(run, m) if m in run.metrics else missing for m in self.metrics),
                *([run.energy_quality or missing] if quality else []),
            ]
            for run in self.runs
        ]

    def interval_metrics(self) -> list[str]:
        """Metrics for which at least one run has a confidence interval (n_trials > 1)."""
        return [m for m in self.metrics if any(m in r.intervals for r in self.runs)]


def metric_label(metric: str) -> str:
    return f"{metric} [{KEY_METRICS[metric]}]"


def load_comparison(
    client: MlflowClient, run_ids: list[str] | None = None, experiment: str | None = None
) -> Comparison:
    """The runs given by id, or every llem run (tag llem.config_hash) of the named experiment."""
    if bool(run_ids) == bool(experiment):
        raise TrackingError("compare needs either --experiment NAME or one or more RUN_IDs (not both)")
    runs = _runs_of_experiment(client, experiment) if experiment else [get_run(client, r) for r in run_ids]
    compared = [
        ComparedRun(
            run_id=r.info.run_id,
            run_name=r.info.run_name or r.info.run_id[:8],
            params=dict(r.data.params),
            metrics={k: v for k, v in r.data.metrics.items() if k in KEY_METRICS},
            intervals=run_intervals(r.data.metrics),
            energy_quality=registry.total_energy_note(r.data.tags),
        )
        for r in runs
    ]
    _disambiguate_names(compared)
    return Comparison(compared, _differing_params(compared), [m for m in KEY_METRICS if any(m in r.metrics for r in compared)])


def _runs_of_experiment(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise TrackingError(f"no experiment named {name!r} at {redact_uri(client.tracking_uri)}; check the name or MLFLOW_TRACKING_URI")
    found = search_all(
        client.search_runs,
        [experiment.experiment_id],
        filter_string=f"tags.`{vt.TAG_CONFIG_HASH}` != ''",
        order_by=["attributes.start_time ASC"],
    )
    runs = [r for r in found if r.data.tags.get(TAG_SUMMARY) != "true"]
    if not runs:
        raise TrackingError(f"experiment {name!r} holds no llem-mlflow runs (runs tagged {vt.TAG_CONFIG_HASH})")
    return runs


def _differing_params(runs: list[ComparedRun]) -> list[str]:
    keys = sorted({k for r in runs for k in r.params})
    if len(runs) < 2:
        return []
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def _disambiguate_names(runs: list[ComparedRun]) -> None:
    """Two runs with one name get their short id appended, so every row is identifiable."""
    names = [r.run_name for r in runs]
    for run in runs:
        if names.count(run.run_name) > 1:
            run.run_name = f"{run.run_name} ({run.run_id[:8]})"


def run_intervals(metrics: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Key metric -> (ci95_low, ci95_high), for the metrics a run has an interval for."""
    return {
        m: (metrics[f"{m}_ci95_low"], metrics[f"{m}_ci95_high"])
        for m in KEY_METRICS
        if f"{m}_ci95_low" in metrics and f"{m}_ci95_high" in metrics
    }


def _format_cell(run: ComparedRun, metric: str) -> str:
    """`0.03127`, or with an interval over trials `0.03127 [0.02901, 0.03310]`."""
    text = format_number(run.metrics[metric])
    if metric in run.intervals:
        low, high = run.intervals[metric]
        text += f" [{format_number(low)}, {format_number(high)}]"
    return text


# --- output formats -------------------------------------------------------------------------------


def render(comparison: Comparison, fmt: str, wide: bool = False) -> str:
    """The comparison as text; the table fits TABLE_WIDTH columns unless `wide`."""
    if fmt == "table":
        return _render_table(comparison, wide)
    if fmt == "csv":
        return _render_csv(comparison)
    if fmt == "json":
        return _render_json(comparison)
    if fmt == "markdown":
        return _render_markdown(comparison)
    raise TrackingError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def _render_table(comparison: Comparison, wide: bool) -> str:
    """Plain columns. Wide: every column, full names. Default: short headers, long cells cut, and the
    columns that fit TABLE_WIDTH, chosen run name first, then headline metrics, params, other metrics."""
    header, rows = comparison.header(), comparison.rows()
    columns = [[head, *cells] for head, *cells in zip(header, *rows, strict=True)]
    hidden: list[str] = []
    if not wide:
        columns, hidden = _fit(comparison, columns)
    widths = [max(len(cell) for cell in column) for column in columns]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in zip(*columns)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if hidden:
        note = f"({len(hidden)} more column(s), --wide shows them: {', '.join(hidden)})"
        lines.append(note if len(note) <= TABLE_WIDTH else note[: TABLE_WIDTH - 4] + "...)")
    return "\n".join(lines) + "\n"


def _fit(comparison: Comparison, columns: list[list[str]]) -> tuple[list[list[str]], list[str]]:
    """The columns of the default table (short headers, cut cells) that fit, and the names left out."""
    n_params, n_metrics = len(comparison.differing_params), len(comparison.metrics)
    leaf_names = _leaf_names(comparison.differing_params)
    short: list[list[str]] = [[_cut(cell) for cell in columns[0]]]
    for param, column in zip(comparison.differing_params, columns[1 : 1 + n_params], strict=True):
        short.append([leaf_names[param], *(_cut(cell) for cell in column[1:])])
    for metric, column in zip(comparison.metrics, columns[1 + n_params : 1 + n_params + n_metrics], strict=True):
        short.append([registry.BY_NAME[metric].column, *column[1:]])
    names = ["run", *comparison.differing_params, *comparison.metrics]
    quality = []  # what the energy figures rest on: right after the headline figures
    if comparison.shows_energy_quality:
        short.append([_cut(cell) for cell in columns[-1]])
        names.append(ENERGY_QUALITY_COLUMN)
        quality = [len(names) - 1]
    headline = [1 + n_params + i for i, m in enumerate(comparison.metrics) if m in registry.HEADLINE]
    rest = [1 + n_params + i for i, m in enumerate(comparison.metrics) if m not in registry.HEADLINE]
    chosen, used = [0], len(max(short[0], key=len))
    for index in [*headline, *quality, *range(1, 1 + n_params), *rest]:
        width = 2 + len(max(short[index], key=len))
        if used + width <= TABLE_WIDTH:
            chosen.append(index)
            used += width
    chosen.sort()  # shown in the usual order: run, params, metrics
    return [short[i] for i in chosen], [names[i] for i in range(len(names)) if i not in chosen]


def _leaf_names(params: list[str]) -> dict[str, str]:
    """`pytorch.batch_size` -> `batch_size` where no other differing param ends the same way."""
    leaves = [p.rsplit(".", 1)[-1] for p in params]
    return {p: leaf if leaves.count(leaf) == 1 else p for p, leaf in zip(params, leaves, strict=True)}


def _cut(cell: str) -> str:
    """Long text loses its middle: run names and values often differ only at the end."""
    if len(cell) <= MAX_CELL:
        return cell
    head = (MAX_CELL - 3) // 2
    return cell[:head] + "..." + cell[-(MAX_CELL - 3 - head) :]


def _render_csv(comparison: Comparison) -> str:
    """Full precision numbers, run id column, empty cell for a quantity not measured."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    with_ci = comparison.interval_metrics()
    ci_header = [f"{m} ci95_{end} [{KEY_METRICS[m]}]" for m in with_ci for end in ("low", "high")]
    writer.writerow(["run_id", *comparison.header(), *ci_header])
    quality = comparison.shows_energy_quality
    for run in comparison.runs:
        writer.writerow(
            [
                run.run_id,
                run.run_name,
                *(run.params.get(p, "") for p in comparison.differing_params),
                *(repr(run.metrics[m]) if m in run.metrics else "" for m in comparison.metrics),
                *([run.energy_quality or ""] if quality else []),
                *(repr(bound) if m in run.intervals else "" for m in with_ci for bound in run.intervals.get(m, (None, None))),
            ]
        )
    return out.getvalue()


def _render_json(comparison: Comparison) -> str:
    """Units once, then one object per run; a metric not measured is absent from its run."""
    payload = {
        "units": {m: KEY_METRICS[m] for m in comparison.metrics},
        "differing_params": comparison.differing_params,
        "runs": [
            {
                "run_id": r.run_id,
                "run_name": r.run_name,
                "params": {p: r.params.get(p) for p in comparison.differing_params},
                "metrics": {m: r.metrics[m] for m in comparison.metrics if m in r.metrics},
                "ci95": {m: list(r.intervals[m]) for m in comparison.metrics if m in r.intervals},
                "energy_quality": r.energy_quality,
            }
            for r in comparison.runs
        ],
    }
    return json.dumps(payload, indent=2) + "\n"


def _render_markdown(comparison: Comparison) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header = comparison.header()
    lines = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [line(row) for row in comparison.rows()]
    return "\n".join(lines) + "\n"


# --- Pareto plot ------------------------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (throughput, energy per token) that no other point beats.

    A point is dominated when another has throughput >= and energy <=, one of them strictly.
    """
    front = []
    for i, (tp_i, e_i) in enumerate(points):
        dominated = any(
            tp_j >= tp_i and e_j <= e_i and (tp_j > tp_i or e_j < e_i) for j, (tp_j, e_j) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def plot_pareto(comparison: Comparison, path: str | Path) -> Path:
    """Energy per output token against throughput, Pareto front marked; runs missing either are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [r for r in comparison.runs if ENERGY_METRIC in r.metrics and THROUGHPUT_METRIC in r.metrics]
    if not plotted:
        raise TrackingError(
            f"no run has both {ENERGY_METRIC} and {THROUGHPUT_METRIC}; nothing to plot (leave out --plot)"
        )
    points = [(r.metrics[THROUGHPUT_METRIC], r.metrics[ENERGY_METRIC]) for r in plotted]
    front = sorted(pareto_front(points), key=lambda i: points[i][0])
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:gray", label="runs", zorder=2)
    ax.plot(
        [points[i][0] for i in front], [points[i][1] for i in front],
        marker="o", color="tab:red", label="Pareto front", zorder=3,
    )  # fmt: skip
    label_inside(ax, [r.run_name for r in plotted], points)
    ax.set_xlabel(f"{THROUGHPUT_METRIC} [{KEY_METRICS[THROUGHPUT_METRIC]}]  (higher is better)")
    ax.set_ylabel(f"{ENERGY_METRIC} [{KEY_METRICS[ENERGY_METRIC]}]  (lower is better)")
    left_out = len(comparison.runs) - len(plotted)
    title = "Energy per token vs throughput"
    ax.set_title(title + (f" ({left_out} run(s) without both metrics left out)" if left_out else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def plot_load_curve(comparison: Comparison, path: str | Path) -> Path:
    """Online runs against their achieved request rate: energy per output token above (steady state when
    every plotted run has it), TTFT and TPOT p50 below. Runs without a request rate are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plotted = sorted((r for r in comparison.runs if RATE_METRIC in r.metrics), key=lambda r: r.metrics[RATE_METRIC])
    if not plotted:
        raise TrackingError(f"no run has {RATE_METRIC} (only scenario: online runs do); nothing to plot against request rate")
    energy = STEADY_ENERGY_METRIC if all(STEADY_ENERGY_METRIC in r.metrics for r in plotted) else ENERGY_METRIC
    figure = Figure(figsize=(7, 7))
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    rates = [r.metrics[RATE_METRIC] for r in plotted]
    series = [(top, energy, "tab:red")] + [(bottom, m, c) for m, c in zip(LATENCY_CURVE_METRICS, ("tab:blue", "tab:orange"))]
    for axes, metric, colour in series:
        points = [(x, r.metrics[metric]) for x, r in zip(rates, plotted) if metric in r.metrics]
        if points:
            axes.plot(*zip(*points), marker="o", color=colour, label=metric)
    labelled = [(run.run_name, (x, run.metrics[energy])) for run, x in zip(plotted, rates) if energy in run.metrics]
    if labelled:
        label_inside(top, [name for name, _ in labelled], [point for _, point in labelled])
    top.set_ylabel(f"{energy} [{KEY_METRICS[energy]}]")
    bottom.set_ylabel("latency p50 [ms]")
    bottom.set_xlabel(f"{RATE_METRIC} [{KEY_METRICS[RATE_METRIC]}]")
    left_out = len(comparison.runs) - len(plotted)
    note = f" ({left_out} run(s) without a request rate left out)" if left_out else ""
    top.set_title("Energy and latency against load" + note, fontsize=10)
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axes.transAxes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path


def plot(comparison: Comparison, path: str | Path, x_axis: str = "throughput") -> Path:
    """compare's plot: the Pareto plot (x: throughput) or the load curve (x: request rate)."""
    if x_axis == "request-rate":
        return plot_load_curve(comparison, path)
    if x_axis != "throughput":
        raise TrackingError(f"unknown x axis {x_axis!r}: use one of {', '.join(X_AXES)}")
    return plot_pareto(comparison, path)
def label_inside(ax, labels: list[str], points: list[tuple[float, float]]) -> None:
    """Name each point, the label on the side that faces the middle of the plot, so none leaves the axes."""
    ax.margins(x=0.15, y=0.15)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_mid, y_mid = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    for label, (x, y) in zip(labels, points, strict=True):
        right, top = x > x_mid, y > y_mid
        ax.annotate(
            label, (x, y), textcoords="offset points", fontsize=8,
            xytext=(-5 if right else 5, -5 if top else 5),
            ha="right" if right else "left", va="top" if top else "bottom",
        )  # fmt: skip


# --- summary run -------------------------------------------------------------------------------------


def log_summary_run(
    client: MlflowClient,
    comparison: Comparison,
    run_name: str,
    experiment_id: str | None = None,
    plot_path: str | Path | None = None,
) -> str:
    """Log the comparison (csv, json, markdown, table, plot) to a new run; return its id."""
    import tempfile

    if experiment_id is None:
        experiment_id = client.get_run(comparison.runs[0].run_id).info.experiment_id
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={TAG_SUMMARY: "true", TAG_COMPARED_RUNS: ",".join(r.run_id for r in comparison.runs)[:5000]},
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for fmt, suffix in (("table", "txt"), ("csv", "csv"), ("json", "json"), ("markdown", "md")):
                Path(tmp, f"comparison.{suffix}").write_text(render(comparison, fmt, wide=True))
            if plot_path is None and any(
                ENERGY_METRIC in r.metrics and THROUGHPUT_METRIC in r.metrics for r in comparison.runs
            ):
                plot_path = plot_pareto(comparison, Path(tmp, "pareto.png"))
            if plot_path is not None:
                client.log_artifact(run.info.run_id, str(plot_path), artifact_path="plots")
            for suffix in ("txt", "csv", "json", "md"):
                client.log_artifact(run.info.run_id, str(Path(tmp, f"comparison.{suffix}")), artifact_path="comparison")
        _end_run(client, run.info.run_id, "FINISHED")
    except BaseException:
        _end_run(client, run.info.run_id, "FAILED")
        raise
    return run.info.run_id


def _end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End the run; MLflow prints "View run at ..." on a server: to stderr, so stdout stays the table."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):
        client.set_terminated(run_id, status)
