"""The MLflow reporter: turns a Report into one MLflow run. No torch.

MLflow lives in a worker process of its own (tracking/report_worker.py): the
measuring process never imports it, so starting MLflow and opening the run
(seconds) run beside the torch import and the model load on another core, and
the measuring process's memory is the model's, not MLflow's. While the core
measures, the reporter is its Listener: tags and phase ends are queued to the
worker. Before every measured window the queue is drained, so no tracking work
runs inside a window. `finish(report)` logs the figures, histories and
artifacts; `fail(report, ...)` logs what a failure left and ends the run.

The functions below that take a `logger` first run in the worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from llem_mlflow import metrics_registry as registry
from llem_mlflow.errors import LlemError, TrackingError
from llem_mlflow.report import Report
from llem_mlflow.tracking.datasets import log_prompt_dataset
from llem_mlflow.tracking.run import writing

MAX_ERROR_TAG = 5000
REQUEST_TABLE = "requests.json"  # the request table again, logged with mlflow.log_table
REQUEST_COLUMNS = [
    "trial", "request_index", "rank", "batch_index", "prompt_index", "input_tokens", "output_tokens",
    "ttft_ms", "tpot_ms", "e2e_ms", "batch_ms", "itl_ms_mean", "text",
]  # fmt: skip


class ReporterError(Exception):
    """A tracking failure in the worker that was not one of our own errors."""


class MlflowReporter:
    def __init__(self) -> None:
        """Start the worker now (it imports MLflow while the caller reads the config); open the run later."""
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "llem_mlflow.tracking.report_worker", str(to_worker_r), str(from_worker_w)],
            pass_fds=(to_worker_r, from_worker_w),
            stdin=subprocess.DEVNULL,
        )
        os.close(to_worker_r)
        os.close(from_worker_w)
        self._outbox = Connection(to_worker_w, readable=False)
        self._inbox = Connection(from_worker_r, writable=False)
        self.opened = False
        self.ended = False

    # --- talking to the worker -----------------------------------------------------------
    def call(self, function: Callable[..., Any], *args: Any) -> None:
        """Queue `function(logger, *args)` (a module-level function: it is sent by name)."""
        self._outbox.send(("call", function, args))

    def drain(self) -> None:
        """Wait until every queued job ran; raise the first failure since the last drain."""
        self._outbox.send(("sync",))
        try:
            error = self._inbox.recv()
        except EOFError:
            raise ReporterError("the MLflow reporter process ended unexpectedly; see the messages above") from None
        if error is not None:
            if error["llem"]:
                raise TrackingError(error["message"])
            raise ReporterError(f"{error['type']}: {error['message']}")

    def open(self, announce: bool = True, **run_options: str | None) -> None:
        """Create the run (or resume the one MLFLOW_RUN_ID names); print where it is."""
        self._outbox.send(("open", run_options))
        self.opened = True
        if announce:
            self.call(announce_run)

    def close(self) -> None:
        try:
            self._outbox.send(("close",))
        except OSError:
            pass
        try:
            self._process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._outbox.close()
        self._inbox.close()

    # --- Listener: called by the core at phase edges -----------------------------------------
    def on_tags(self, tags: dict[str, str]) -> None:
        self.call(set_tags, dict(tags))

    def on_phase_end(self, report: Report, phase: str) -> None:
        if phase.startswith("measure"):  # a finished trial survives a later crash: the results so far
            self.call(log_results_json, {**report.results(), "status": "in progress"})

    def before_window(self) -> None:
        self.drain()

    # --- the end ------------------------------------------------------------------------------
    def finish(self, report: Report) -> None:
        self.call(log_report, report)
        self.drain()

    def end(self, status: str) -> None:
        self.call(end_run, status)
        self.drain()
        self.ended = True

    def fail(self, report: Report | None, status: str, message: str, detail: str | None = None) -> None:
        """Log what is known about the failure and end the run; never raises (no run stays RUNNING)."""
        if not self.opened or self.ended:
            return
        try:
            self.drain()  # an earlier logging error is already being handled by the caller
        except (LlemError, ReporterError):
            pass
        try:
            self.call(log_failure, report, status, message, detail)
            self.drain()
            self.ended = True
        except Exception as exc:
            print(f"warning: could not mark the run {status}: {exc}", file=sys.stderr)


# --- jobs: these run in the worker process -----------------------------------------------------
def announce_run(logger: Any) -> None:
    print(logger.where(), flush=True)


def set_tags(logger: Any, tags: dict[str, str]) -> None:
    logger.set_tags(tags)


def log_config(logger: Any, params: dict[str, str], config_yaml: str) -> None:
    logger.log_params(params)
    logger.log_text(config_yaml, "config/experiment.yaml")


def log_results_json(logger: Any, results: dict[str, Any]) -> None:
    logger.log_json(results, "results.json")


def end_run(logger: Any, status: str) -> None:
    logger.end(status)


def log_report(logger: Any, report: Report) -> None:
    """The figures (headline first: the UI lists them in logging order), histories and artifacts."""
    logger.log_metrics(headline_first(report.metrics))
    if len(report.trial_metrics) > 1:
        now = int(time.time() * 1000)
        logger.log_metric_points(
            (f"trial/{name}", value, now, trial)
            for trial, values in enumerate(report.trial_metrics, start=1)
            for name, value in values.items()
        )
    if report.energy is not None:
        from llem_mlflow.energy.timeline import metric_histories

        logger.log_history(metric_histories(report.energy.samples))
    if report.histories:
        logger.log_history(report.histories)
    logger.log_json({**report.resolved, "environment": with_mlflow_version(report.resolved.get("environment"))}, "config/resolved.json")
    log_prompt_dataset(logger, report.config, report.prompts)
    log_common_artifacts(logger, report, with_results=False)
    with writing(report.workdir / "latency.png"):
        plot = plot_latency(report.records, report.workdir / "latency.png")
    if plot is not None:
        logger.log_artifact(plot, "plots")
    if "timeline/requests_in_flight" in report.histories:
        with writing(report.workdir / "load_timeline.png"):
            plot = plot_load_timeline(report, report.workdir / "load_timeline.png")
        logger.log_artifact(plot, "plots")
    logger.log_json(report.results(), "results.json")  # last: "complete" only once everything else is stored


def headline_first(metrics: dict[str, float]) -> dict[str, float]:
    """The UI lists a run's metrics, and its compare page picks its first axis, in logging order."""
    return {name: metrics[name] for name in registry.display_order(metrics)}


def log_common_artifacts(logger: Any, report: Report, with_results: bool = True) -> None:
    """results.json (first: after a failure it replaces an earlier one at once; if even that cannot be
    stored, RunLogger removes the earlier one), the request table (requests.csv and the MLflow table
    requests.json), the energy files and the report's texts."""
    if with_results:
        logger.log_json(report.results(), "results.json")
    for path, text in report.texts.items():
        logger.log_text(text, path)
    if report.records:
        path = report.workdir / "requests.csv"
        with writing(path):  # the workdir is in the temp folder: a full disk there names the file
            write_request_table(report.records, path)
        logger.log_artifact(path)
        log_request_table(logger, report.records)
    if report.energy is not None:
        from llem_mlflow.energy.artifacts import write_energy_artifacts

        energy_dir = report.workdir / "energy"
        with writing(energy_dir):
            written = write_energy_artifacts(report.energy, energy_dir)
        for path in written:
            parent = path.parent.relative_to(energy_dir).as_posix()
            logger.log_artifact(path, None if parent == "." else parent)


def log_failure(logger: Any, report: Report | None, status: str, message: str, detail: str | None) -> None:
    """Each step on its own: the tracking store itself may be what fails; the run is ended regardless."""
    steps: list[Callable[[], Any]] = []
    if report is not None:
        steps.append(lambda: logger.log_metrics(headline_first(report.metrics)))
        steps.append(lambda: logger.set_tags(report.tags))
        steps.append(lambda: log_common_artifacts(logger, report))
        steps.append(lambda: log_prompt_dataset(logger, report.config, report.prompts))
    steps.append(lambda: logger.set_tags({"llem.error": message[:MAX_ERROR_TAG], "llem.status": status.lower()}))
    steps.append(lambda: logger.log_text(message + ("\n\n" + detail if detail else "") + "\n", "error.txt"))
    for step in steps:
        try:
            step()
        except Exception as exc:
            print(f"warning: could not log the failure details: {exc}", file=sys.stderr)
    logger.end(status)


def with_mlflow_version(environment: dict[str, Any] | None) -> dict[str, Any]:
    import mlflow

    return {**(environment or {}), "mlflow": mlflow.__version__}


def request_rows(records: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The table's columns and one row per request (the list of ITL gaps becomes its mean)."""
    columns = getattr(records[0], "TABLE_COLUMNS", REQUEST_COLUMNS)  # online records name their own
    rows = []
    for r in records:
        row = asdict(r)
        itl = row.pop("itl_ms")
        row["itl_ms_mean"] = sum(itl) / len(itl) if itl else None
        row["tpot_ms"] = r.tpot_ms
        rows.append({c: row.get(c) for c in columns})
    return columns, rows


def write_request_table(records: list[Any], path: Path) -> None:
    import csv

    columns, rows = request_rows(records)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def log_request_table(logger: Any, records: list[Any]) -> None:
    """The rows as an MLflow table: the UI's artifact view shows it as a table, and
    mlflow.load_table("requests.json", run_ids=[...]) reads it back for any set of runs.
    MLflow appends to a table that exists, so a failure after the end logs it only once."""
    if any(item.path == REQUEST_TABLE for item in logger.client.list_artifacts(logger.run_id)):
        return
    columns, rows = request_rows(records)
    logger.client.log_table(logger.run_id, data={c: [row[c] for row in rows] for c in columns}, artifact_file=REQUEST_TABLE)


def plot_latency(records: list[Any], path: Path) -> Path | None:
    """TTFT and end-to-end latency per request (histograms), one series per trial."""
    if not records:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no pyplot state
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    trials = sorted({r.trial for r in records})
    ttft = [[r.ttft_ms for r in records if r.trial == t and r.ttft_ms is not None] for t in trials]
    e2e = [[r.e2e_ms for r in records if r.trial == t] for t in trials]
    labels = [f"trial {t}" for t in trials]
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    if any(ttft):
        axes[0].hist(ttft, bins=30, label=labels)
        axes[0].set_title("Time to first token")
    else:
        axes[0].text(0.5, 0.5, "TTFT not measured\n(beam search)", ha="center", va="center")
    axes[0].set_xlabel("ms")
    axes[1].hist(e2e, bins=30, label=labels)
    axes[1].set_title("End-to-end latency")
    axes[1].set_xlabel("ms")
    for ax in axes:
        ax.set_ylabel("requests")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5 requests
        if len(trials) > 1 and ax.has_data():
            ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def plot_load_timeline(report: Report, path: Path) -> Path:
    """Requests in flight and waiting over time (scenario: online), GPU power beside them, steady window shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    histories = report.histories
    t0 = histories["timeline/requests_in_flight"][0][0]

    def seconds(stamp: float) -> float:
        return (stamp - t0) / 1000.0

    figure = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, label, colour in (("in_flight", "in flight", "tab:blue"), ("waiting", "waiting", "tab:orange")):
        points = histories[f"timeline/requests_{name}"]
        axes.step([seconds(t) for t, _ in points], [v for _, v in points], where="post", label=label, color=colour)
    window = report.resolved.get("steady_window_epoch_ms")
    if window:
        axes.axvspan(seconds(window[0]), seconds(window[1]), color="tab:green", alpha=0.15, label="steady window")
    axes.set_xlabel("time since the first arrival (s)")
    axes.set_ylabel("requests")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    end = histories["timeline/requests_in_flight"][-1][0]
    samples = [s for s in (report.energy.samples if report.energy is not None else []) if t0 <= s.timestamp_ms <= end]
    if samples:
        power = figure.axes[0].twinx()
        for gpu in sorted({s.gpu for s in samples}):
            points = [(seconds(s.timestamp_ms), s.power_w) for s in samples if s.gpu == gpu and s.power_w is not None]
            if points:
                power.plot(*zip(*points), color="tab:red", linewidth=0.8, alpha=0.7, label=f"GPU {gpu} power")
        power.set_ylabel("power (W)")
        power.legend(loc="upper right", fontsize=8)
    axes.legend(loc="upper left", fontsize=8)
    axes.set_title("Online load (trial 1)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def preload_plotting(logger: Any) -> None:
    """Import matplotlib while the model loads, so the plots at the end cost only the drawing."""
    import matplotlib.figure  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401
