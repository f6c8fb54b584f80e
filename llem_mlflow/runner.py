"""The measuring core: one experiment's phases in order, into a Report. No MLflow.

    environment -> baseline -> load -> warmup -> measure (x n_trials) -> summary

Each phase has a begin and an end edge. At the edges the energy monitor opens
and closes its window (after a CUDA synchronize) and the phase's duration
becomes `time/<phase>_s`. A Listener (the MLflow reporter) hears about tags and
phase ends; nothing it does runs inside a measured window.

    report = measure(cfg)                      # anywhere torch runs: a GPU box, a worker, a test
    Measurement(cfg, listener=...).run()       # the same, keeping the partial Report on a failure
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from llem_mlflow import __version__
from llem_mlflow import metrics_registry as registry
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.config.params import config_hash
from llem_mlflow.progress import progress
from llem_mlflow.redact import redact
from llem_mlflow.report import Listener, NoListener, Report

if TYPE_CHECKING:
    from llem_mlflow.bench.generation import Batch, Generator, RequestRecord
    from llem_mlflow.bench.loading import LoadedModel
    from llem_mlflow.energy.monitor import EnergyMonitor
    from llem_mlflow.energy.readings import PhaseEnergy


def measure(cfg: ExperimentConfig, **options: Any) -> Report:
    """Run the experiment and return its Report (options: see Measurement). Raises on a failure."""
    return Measurement(cfg, **options).run()


class Measurement:
    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        model_path: str | None = None,
        quiet: bool = False,
        nvml: Any = None,
        listener: Listener | None = None,
        workdir: Path | None = None,
    ):
        """`nvml`: the NVML library (None: pynvml; tests pass a fake GPU). `workdir`: where the
        meters keep their files (default: a new temporary folder; `cleanup()` removes it)."""
        self.cfg = cfg
        self.model_path = model_path
        self.quiet = quiet
        self.nvml = nvml
        self.listener: Listener = listener or NoListener()
        self.report = Report(cfg, workdir=workdir or Path(tempfile.mkdtemp(prefix="llem-run-")))
        self.monitor: EnergyMonitor | None = None
        self._cut_short: PhaseEnergy | None = None  # the energy window a failure closed early

    # --- the phases ------------------------------------------------------------------
    def run(self) -> Report:
        from llem_mlflow.bench.device import synchronize
        from llem_mlflow.bench.environment import environment_snapshot, environment_tags
        from llem_mlflow.energy.monitor import EnergyMonitor

        cfg = self.cfg
        self.report.durations_s["startup"] = process_age_s()  # imports and config: the fixed cost before phase 1
        self.add_tags(identity_tags(cfg))
        with self.phase("environment"):
            self.report.resolved["environment"] = environment_snapshot()
            self.add_tags(environment_tags(self.report.resolved["environment"]))
        self.monitor = EnergyMonitor(cfg, synchronize, nvml=self.nvml, workdir=self.report.workdir / "energy-meters")
        try:
            with self.phase("baseline", energy=False):
                measured = self.monitor.measure_baseline()
            if not measured:  # skipped (disabled, or no GPU): no phase took place, its tag says why
                del self.report.durations_s["baseline"]
            with self.phase("load"):
                loaded = self.load_model()
            from llem_mlflow.bench.environment import device_tags

            self.add_tags(device_tags(loaded))
            generator, batches = self.prepare(loaded)
            if cfg.warmup.enabled:  # disabled: no phase, so no time/warmup_s or energy/warmup_j
                with self.phase("warmup"):
                    self.run_warmup(generator, batches)
            for trial in range(1, cfg.n_trials + 1):
                if trial > 1:
                    self.cool_down()
                self.run_trial(trial, generator, batches, loaded)
            self.summarise(loaded)
            self.report.status = "complete"
        finally:
            self.monitor.close()
            self.report.energy = self.monitor.record()
        return self.report

    def add_tags(self, tags: dict[str, str]) -> None:
        self.report.tags.update(tags)
        self.listener.on_tags(tags)

    def load_model(self) -> LoadedModel:
        from llem_mlflow.bench.loading import load_model

        if self.quiet or not sys.stderr.isatty():
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # its "Loading weights" bar would fill logs
        return load_model(self.cfg, model_path=self.model_path)

    def prepare(self, loaded: LoadedModel) -> tuple[Generator, list[Batch]]:
        from llem_mlflow.bench.generation import Generator
        from llem_mlflow.bench.prompts import load_prompts

        prompts = load_prompts(self.cfg, loaded.tokenizer)
        generator = Generator(loaded, self.cfg)
        self.report.resolved.update(
            {
                "from_pretrained": redact(loaded.resolved),
                "generate_kwargs": generator.generate_kwargs,
                "generation_config": generator.resolved_generation_config(),
            }
        )
        batches = generator.batches(prompts)
        self.add_tags(generator.truncation.tags())  # llem.warning.truncated_prompts, when any was cut
        return generator, batches

    def run_warmup(self, generator: Generator, batches: list[Batch]) -> None:
        warm = [batches[i % len(batches)] for i in range(self.cfg.warmup.n_batches)]
        with progress(len(warm), "warmup", self.quiet) as advance:
            for batch in warm:
                generator.run_batch(batch)
                advance()

    def run_trial(self, trial: int, generator: Generator, batches: list[Batch], loaded: LoadedModel) -> None:
        from llem_mlflow.bench.device import reset_gpu_peak_memory
        from llem_mlflow.bench.stats import latency_metrics

        reset_gpu_peak_memory(loaded.gpu_indices)
        phase = "measure" if trial == 1 else f"measure/{trial}"
        records: list[RequestRecord] = []
        if trial == 1:
            self.report.records = records  # filled batch by batch: what a failure keeps
        self.listener.before_window()
        with self.phase(phase) as window:
            with progress(len(batches), f"measure {trial}/{self.cfg.n_trials}", self.quiet) as advance:
                for batch in batches:
                    records.extend(generator.run_batch(batch))
                    advance()
        duration = self.report.durations_s[phase]
        metrics = latency_metrics(records)
        metrics.update(throughput_metrics(metrics, len(records), duration))
        metrics["time/measure_s"] = duration
        if window.energy is not None:
            metrics.update(self.monitor.metrics(window.energy, int(metrics.get("tokens/output_total", 0)), len(records)))
        self.report.trial_metrics.append(metrics)

    def cool_down(self) -> None:
        """Between trials: wait until the GPU is back near its idle temperature."""
        from llem_mlflow.energy.cooldown import wait_until_cool

        cooldown = self.cfg.cooldown
        if not cooldown.enabled:
            return
        baseline_c = self.monitor.baseline_temperature_c()
        if baseline_c is None:
            self.add_tags({"llem.cooldown": "skipped: no GPU baseline temperature (no GPU, or baseline disabled)"})
            return
        waited, reached = wait_until_cool(self.monitor.gpu_temperature_c, baseline_c, cooldown.tolerance_c, cooldown.timeout_s)
        metrics = self.report.metrics
        metrics["time/cooldown_s"] = metrics.get("time/cooldown_s", 0.0) + waited
        if not reached:
            self.add_tags(
                {
                    "llem.warning.cooldown_timeout": f"the GPU did not cool to within {cooldown.tolerance_c} C of its "
                    f"baseline in {cooldown.timeout_s} s; the next trial started warm"
                }
            )

    # --- summary ----------------------------------------------------------------------
    def summarise(self, loaded: LoadedModel) -> None:
        from llem_mlflow.bench.device import gpu_memory_metrics
        from llem_mlflow.bench.stats import model_metrics, peak_rss_mb

        report = self.report
        metrics = report.phase_time_metrics()
        metrics.update(summarise_trials(report.trial_metrics))
        metrics.update(report.metrics)
        metrics.update(model_metrics(loaded))
        metrics.update(gpu_memory_metrics(loaded))
        metrics["memory/process_peak_rss_mb"] = peak_rss_mb()
        report.metrics = metrics
        report.resolved["prompt_order"] = [r.prompt_index for r in report.records]
        tags = self.monitor.tags()
        if any(r.ttft_ms is None for r in report.records):
            tags["llem.latency.streaming"] = (
                "unavailable: beam search cannot stream, so TTFT and inter-token latency were not measured; "
                "latency/e2e_ms_* is per batch"
            )
        self.add_tags(tags)

    # --- failure --------------------------------------------------------------------
    def partial(self, error: str) -> Report:
        """The Report after a failure: what finished is kept, and marked partial."""
        from llem_mlflow.bench.stats import latency_metrics

        report = self.report
        report.status, report.error = "partial", error
        partial = dict(report.metrics)
        tags = {"llem.failed_phase": report.phase}
        if report.records and not report.trial_metrics:
            partial.update(latency_metrics(report.records))
            if self._cut_short is not None and self.monitor is not None:
                output_tokens = sum(r.output_tokens for r in report.records)
                partial.update(self.monitor.metrics(self._cut_short, output_tokens, len(report.records)))
                tags["llem.partial"] = "energy/* and latency/* cover the measured batches that finished before the failure"
        partial.update(report.phase_time_metrics())
        report.metrics = partial
        if self.monitor is not None:
            tags.update(self.monitor.tags())
        report.tags.update(tags)
        return report

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.report.workdir, ignore_errors=True)

    @contextmanager
    def phase(self, name: str, energy: bool = True) -> Iterator[_Window]:
        """One phase between two edges: timing always, an energy window where asked."""
        from llem_mlflow.bench.device import synchronize

        self.report.phase = name
        window = _Window()
        monitor = self.monitor if energy else None
        synchronize()
        if monitor is not None:
            monitor.begin(name)
        start = time.perf_counter()
        try:
            yield window
        except BaseException:
            if monitor is not None:  # close the window so the energy up to the failure is kept
                with suppress(Exception):
                    self._cut_short = monitor.end(name)
            raise
        synchronize()
        self.report.durations_s[name] = time.perf_counter() - start
        if monitor is not None:
            window.energy = monitor.end(name)
        self.listener.on_phase_end(self.report, name)


class _Window:
    energy: PhaseEnergy | None = None


# --- small pure helpers ------------------------------------------------------------------
def identity_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """What the run is: tool version, config hash, model, and the user's own tags (secrets redacted)."""
    logged = redacted_config(cfg)
    return {"llem.version": __version__, "llem.config_hash": config_hash(logged), "llem.model": cfg.model, **logged.tags}


def process_age_s() -> float:
    import psutil

    return max(time.time() - psutil.Process().create_time(), 0.0)


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
    if not trials:
        return {}
    names = [name for name in trials[0] if all(name in t for t in trials)]
    out: dict[str, float] = {}
    for name in names:
        values = [t[name] for t in trials]
        if name in registry.TRIAL_SPREAD and len(values) > 1:
            from llem_mlflow.stats import trial_summary  # scipy: only when there is a spread to compute

            out.update(trial_summary(name, values))
        else:
            out[name] = sum(values) / len(values)
    return out
