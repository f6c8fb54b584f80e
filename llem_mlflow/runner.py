"""One experiment: the phases in order, nothing else.

    environment -> baseline -> load -> warmup -> measure (x n_trials) -> report

Each phase has a begin and an end edge. At the edges the energy monitor
opens and closes its window (after a CUDA synchronize) and the phase's
duration becomes `time/<phase>_s`. The runner joins bench/ (torch) and
energy/ to tracking/ (MLflow); it measures nothing itself.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llem_mlflow import __version__
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.config.params import config_hash, config_to_params, config_to_yaml
from llem_mlflow.progress import progress
from llem_mlflow.redact import redact
from llem_mlflow.tracking.run import RunLogger

# Metrics whose spread across trials is reported (mean, std, 95% CI, CV).
TRIAL_SPREAD_METRICS = ("energy/j_per_output_token", "throughput/output_tokens_per_s", "latency/ttft_ms_p50")


@dataclass
class ExperimentState:
    """What the run has gathered so far; logged as partial results when a phase fails."""

    phase: str = "start"
    durations_s: dict[str, float] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)
    trial_metrics: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    interrupted_energy: Any = None  # the energy window a failure cut short


class Experiment:
    """Runs one ExperimentConfig into one MLflow run."""

    def __init__(self, cfg: ExperimentConfig, logger: RunLogger, quiet: bool = False, model_path: str | None = None):
        self.cfg = cfg
        self.logger = logger
        self.quiet = quiet
        self.model_path = model_path
        self.state = ExperimentState()
        self.workdir = Path(tempfile.mkdtemp(prefix="llem-run-"))
        self.monitor: Any = None

    # --- the phases ------------------------------------------------------------------
    def run(self) -> ExperimentState:
        from llem_mlflow.bench.device import synchronize
        from llem_mlflow.energy.monitor import EnergyMonitor

        cfg = self.cfg
        self.log_config()
        with self.phase("environment"):
            self.add_tags(environment_tags())
        self.monitor = EnergyMonitor(cfg, synchronize, workdir=self.workdir / "energy-meters")
        try:
            with self.phase("baseline", energy=False):
                measured = self.monitor.measure_baseline()
            if not measured:  # skipped (disabled, or no GPU): no phase took place, its tag says why
                del self.state.durations_s["baseline"]
            with self.phase("load"):
                loaded = self.load_model()
            self.add_tags(device_tags(loaded))
            generator, batches = self.prepare(loaded)
            with self.phase("warmup"):
                self.run_warmup(generator, batches)
            for trial in range(1, cfg.n_trials + 1):
                if trial > 1:
                    self.cool_down()
                self.run_trial(trial, generator, batches, loaded)
            with self.phase("report", energy=False):
                self.report(loaded, generator)
        finally:
            self.monitor.close()
        return self.state

    def log_config(self) -> None:
        cfg = redacted_config(self.cfg)
        self.logger.log_params(config_to_params(cfg))
        self.add_tags({"llem.version": __version__, "llem.config_hash": config_hash(cfg), "llem.model": cfg.model, **cfg.tags})
        self.logger.log_text(config_to_yaml(cfg), "config/experiment.yaml")

    def add_tags(self, tags: dict[str, str]) -> None:
        """Log tags now and keep them for results.json."""
        self.state.tags.update(tags)
        self.logger.set_tags(tags)

    def load_model(self) -> Any:
        from llem_mlflow.bench.loading import load_model

        if self.quiet or not sys.stderr.isatty():
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # its "Loading weights" bar would fill logs
        return load_model(self.cfg, model_path=self.model_path)

    def prepare(self, loaded: Any) -> tuple[Any, list[Any]]:
        from llem_mlflow.bench.generation import Generator
        from llem_mlflow.bench.prompts import load_prompts

        prompts = load_prompts(self.cfg, loaded.tokenizer)
        generator = Generator(loaded, self.cfg)
        return generator, generator.batches(prompts)

    def run_warmup(self, generator: Any, batches: list[Any]) -> None:
        if not self.cfg.warmup.enabled:
            return
        warm = [batches[i % len(batches)] for i in range(self.cfg.warmup.n_batches)]
        with progress(len(warm), "warmup", self.quiet) as advance:
            for batch in warm:
                generator.run_batch(batch)
                advance()

    def run_trial(self, trial: int, generator: Any, batches: list[Any], loaded: Any) -> None:
        from llem_mlflow.bench.stats import latency_metrics

        reset_gpu_peak_memory(loaded)
        phase = "measure" if trial == 1 else f"measure/{trial}"
        records: list[Any] = []
        if trial == 1:
            self.state.records = records  # filled batch by batch: what a failure keeps
        with self.phase(phase) as window:
            with progress(len(batches), f"measure {trial}/{self.cfg.n_trials}", self.quiet) as advance:
                for number, batch in enumerate(batches, start=1):
                    inject_test_fault(number)
                    records.extend(generator.run_batch(batch))
                    advance()
        duration = self.state.durations_s[phase]
        metrics = latency_metrics(records)
        metrics.update(throughput_metrics(metrics, len(records), duration))
        metrics["time/measure_s"] = duration
        if window.energy is not None:
            metrics.update(self.monitor.metrics(window.energy, int(metrics.get("tokens/output_total", 0)), len(records)))
        self.state.trial_metrics.append(metrics)

    def cool_down(self) -> None:
        """Between trials: wait until the GPU is back near its idle temperature."""
        from llem_mlflow.sweep.cooldown import wait_until_cool

        cooldown = self.cfg.cooldown
        if not cooldown.enabled:
            return
        baseline_c = self.monitor.baseline_temperature_c()
        if baseline_c is None:
            self.state.tags["llem.cooldown"] = "skipped: no GPU baseline temperature (no GPU, or baseline disabled)"
            return
        waited, reached = wait_until_cool(
            self.monitor.gpu_temperature_c, baseline_c, cooldown.tolerance_c, cooldown.timeout_s
        )
        self.state.metrics["time/cooldown_s"] = self.state.metrics.get("time/cooldown_s", 0.0) + waited
        if not reached:
            self.state.tags["llem.warning.cooldown_timeout"] = (
                f"the GPU did not cool to within {self.cfg.cooldown.tolerance_c} C of its baseline "
                f"in {self.cfg.cooldown.timeout_s} s; the next trial started warm"
            )

    # --- report ---------------------------------------------------------------------
    def report(self, loaded: Any, generator: Any) -> None:
        state = self.state
        metrics = self.phase_time_metrics()
        metrics.update(summarise_trials(state.trial_metrics))
        metrics.update(state.metrics)
        metrics.update(model_metrics(loaded))
        metrics.update(gpu_memory_metrics(loaded))
        metrics["memory/process_peak_rss_mb"] = peak_rss_mb()
        state.metrics = metrics
        tags = self.monitor.tags()
        if any(r.ttft_ms is None for r in state.records):
            tags["llem.latency.streaming"] = (
                "unavailable: beam search cannot stream, so TTFT and inter-token latency were not measured; "
                "latency/e2e_ms_* is per batch"
            )
        self.logger.log_metrics(metrics)
        self.add_tags(tags)
        if len(state.trial_metrics) > 1:
            self.logger.log_metric_points(
                (f"trial/{name}", value, int(time.time() * 1000), trial)
                for trial, values in enumerate(state.trial_metrics, start=1)
                for name, value in values.items()
            )
        self.logger.log_history(self.monitor.timeline())
        self.write_artifacts(loaded, generator)

    def write_artifacts(self, loaded: Any, generator: Any) -> None:
        out = self.workdir / "artifacts"
        out.mkdir(parents=True, exist_ok=True)
        resolved = {
            "from_pretrained": redact(loaded.resolved),
            "generate_kwargs": generator.generate_kwargs,
            "generation_config": generator.resolved_generation_config(),
            "prompt_order": [r.prompt_index for r in self.state.records],
            "environment": environment_snapshot(),
        }
        self.logger.log_json(resolved, "config/resolved.json")
        self.logger.log_json(self.results_json(), "results.json")
        self.log_request_table()
        plot = plot_latency(self.state.records, out / "latency.png")
        if plot:
            self.logger.log_artifact(plot, "plots")
        self.log_energy_artifacts()

    def log_energy_artifacts(self) -> None:
        """Per-phase energy, the timeline table and plot, CodeCarbon's CSV (at the artifact root)."""
        energy_dir = self.workdir / "energy"
        energy_dir.mkdir(parents=True, exist_ok=True)
        for path in self.monitor.write_artifacts(energy_dir):
            parent = path.parent.relative_to(energy_dir).as_posix()
            self.logger.log_artifact(path, None if parent == "." else parent)

    def results_json(self, error: str | None = None) -> dict[str, Any]:
        return {
            "status": "partial" if error else "complete",
            "error": error,
            "phase": self.state.phase,
            "metrics": self.state.metrics,
            "trials": self.state.trial_metrics,
            "durations_s": self.state.durations_s,
            "tags": self.state.tags,
            "requests_completed": len(self.state.records),
        }

    # --- failure --------------------------------------------------------------------
    def log_partial(self, error: str) -> None:
        """Keep what finished before a failure: metrics of finished batches, partial results."""
        from llem_mlflow.bench.stats import latency_metrics

        partial = dict(self.state.metrics)
        tags = {"llem.failed_phase": self.state.phase}  # the tags gathered so far are logged already
        if self.state.records and not self.state.trial_metrics:
            partial.update(latency_metrics(self.state.records))
            if self.state.interrupted_energy is not None:
                output_tokens = sum(r.output_tokens for r in self.state.records)
                partial.update(self.monitor.metrics(self.state.interrupted_energy, output_tokens, len(self.state.records)))
                tags["llem.partial"] = "energy/* and latency/* cover the measured batches that finished before the failure"
        partial.update(self.phase_time_metrics())
        self.state.metrics = partial
        self.logger.log_metrics(partial)
        if self.monitor is not None:
            tags.update(self.monitor.tags())
            self.log_energy_artifacts()
        self.add_tags(tags)
        self.logger.log_json(self.results_json(error), "results.json")
        if self.state.records:
            self.log_request_table()

    def log_request_table(self) -> None:
        path = self.workdir / "requests.csv"
        write_request_table(self.state.records, path)
        self.logger.log_artifact(path)

    def phase_time_metrics(self) -> dict[str, float]:
        """`time/<phase>_s` for every phase that ended (trials after the first are in trial/*)."""
        return {f"time/{name}_s": value for name, value in self.state.durations_s.items() if "/" not in name}

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    @contextmanager
    def phase(self, name: str, energy: bool = True) -> Iterator[Any]:
        """One phase between two edges: timing always, an energy window where asked."""
        from llem_mlflow.bench.device import synchronize

        self.state.phase = name
        window = _Window()
        measure_energy = energy and self.monitor is not None
        synchronize()
        if measure_energy:
            self.monitor.begin(name)
        start = time.perf_counter()
        try:
            yield window
        except BaseException:
            if measure_energy:  # close the window so the energy up to the failure is kept
                with suppress(Exception):
                    self.state.interrupted_energy = self.monitor.end(name)
            raise
        synchronize()
        self.state.durations_s[name] = time.perf_counter() - start
        if measure_energy:
            window.energy = self.monitor.end(name)


@dataclass
class _Window:
    energy: Any = None


# --- small pure helpers ------------------------------------------------------------------
def redacted_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config as it may be logged: secret-keyed values in user mappings replaced."""
    return cfg.model_copy(update={"passthrough_kwargs": redact(cfg.passthrough_kwargs), "tags": redact(cfg.tags)})


def throughput_metrics(latency: dict[str, float], requests: int, duration_s: float) -> dict[str, float]:
    if duration_s <= 0:
        return {}
    out = {"throughput/requests_per_s": requests / duration_s}
    if "tokens/output_total" in latency:
        out["throughput/output_tokens_per_s"] = latency["tokens/output_total"] / duration_s
    if "tokens/input_total" in latency:
        out["throughput/input_tokens_per_s"] = latency["tokens/input_total"] / duration_s
    return out


def summarise_trials(trials: list[dict[str, float]]) -> dict[str, float]:
    """Headline metrics: the mean over trials; spread for the key metrics when n > 1."""
    from llem_mlflow.stats import trial_summary

    if not trials:
        return {}
    names = [name for name in trials[0] if all(name in t for t in trials)]
    out: dict[str, float] = {}
    for name in names:
        values = [t[name] for t in trials]
        if name in TRIAL_SPREAD_METRICS:
            out.update(trial_summary(name, values))
        else:
            out[name] = sum(values) / len(values)
    return out


def inject_test_fault(batch_number: int) -> None:
    """Test-only: LLEM_TEST_OOM_AT_BATCH=N raises torch's out-of-memory error before measured batch N,
    so the CUDA OOM code path can be exercised on a CPU."""
    if os.environ.get("LLEM_TEST_OOM_AT_BATCH") == str(batch_number):
        import torch

        raise torch.OutOfMemoryError(f"injected for a test before measured batch {batch_number}")


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_metrics(loaded: Any) -> dict[str, float]:
    from llem_mlflow.bench.stats import flops_per_output_token

    return {"flops/per_output_token": float(flops_per_output_token(loaded)), "model/params": float(loaded.n_params)}


def reset_gpu_peak_memory(loaded: Any) -> None:
    if loaded.gpu_indices:
        import torch

        for index in loaded.gpu_indices:
            torch.cuda.reset_peak_memory_stats(index)


def gpu_memory_metrics(loaded: Any) -> dict[str, float]:
    """Peak allocated over the measured trials and the model's own size, GPU runs only."""
    if not loaded.gpu_indices:
        return {}
    import torch

    mb = 1024.0 * 1024.0
    peak = sum(torch.cuda.max_memory_allocated(i) for i in loaded.gpu_indices) / mb
    model_bytes = loaded.model.get_memory_footprint() if hasattr(loaded.model, "get_memory_footprint") else None
    out = {"memory/gpu_peak_allocated_mb": peak}
    if model_bytes:
        out["memory/gpu_model_mb"] = model_bytes / mb
    return out


def environment_snapshot() -> dict[str, Any]:
    import mlflow
    import torch
    import transformers

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "llem_mlflow": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mlflow": mlflow.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }


def environment_tags() -> dict[str, str]:
    env = environment_snapshot()
    return {
        "llem.versions.python": env["python"],
        "llem.versions.torch": env["torch"],
        "llem.versions.transformers": env["transformers"],
        "llem.versions.mlflow": env["mlflow"],
        "llem.cuda.version": env["cuda"] or "none",
    }


def device_tags(loaded: Any) -> dict[str, str]:
    from llem_mlflow.tracking.hardware import cpu_model

    if loaded.gpu_indices:
        import torch

        names = sorted({torch.cuda.get_device_name(i) for i in loaded.gpu_indices})
        return {
            "llem.device.type": "cuda",
            "llem.device.name": ", ".join(names),
            "llem.device.count": str(len(loaded.gpu_indices)),
        }
    return {"llem.device.type": "cpu", "llem.device.name": cpu_model(), "llem.device.count": "1"}


def write_request_table(records: list[Any], path: Path) -> None:
    import csv

    columns = ["request_index", "batch_index", "prompt_index", "input_tokens", "output_tokens", "ttft_ms", "e2e_ms", "itl_ms_mean", "text"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in records:
            row = asdict(r)
            itl = row.pop("itl_ms")
            row["itl_ms_mean"] = sum(itl) / len(itl) if itl else None
            writer.writerow({c: row.get(c) for c in columns})


def plot_latency(records: list[Any], path: Path) -> Path | None:
    """TTFT and end-to-end latency per request (histograms)."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ttft = [r.ttft_ms for r in records if r.ttft_ms is not None]
    e2e = [r.e2e_ms for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if ttft:
        axes[0].hist(ttft, bins=30, color="tab:blue")
        axes[0].set_title("Time to first token")
    else:
        axes[0].text(0.5, 0.5, "TTFT not measured\n(beam search)", ha="center", va="center")
    axes[0].set_xlabel("ms")
    axes[1].hist(e2e, bins=30, color="tab:orange")
    axes[1].set_title("End-to-end latency")
    axes[1].set_xlabel("ms")
    for ax in axes:
        ax.set_ylabel("requests")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

