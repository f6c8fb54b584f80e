"""The measuring core: one experiment's phases in order, into a Report. No MLflow.

    environment -> baseline -> load -> baseline_loaded -> first_generate -> warmup
        -> (measure [-> prefill]) x n_trials -> summary

Each phase has a begin and an end edge. At the edges the energy monitor opens
and closes its window (after a CUDA synchronize of every GPU the model
occupies), the phase's peak memory is reset and read, and the phase's duration
becomes `time/<phase>_s`. A Listener (the MLflow reporter) hears about tags and
phase ends; nothing it does runs inside a measured window.

    report = measure(cfg)                      # anywhere torch runs: a GPU box, a worker, a test
    Measurement(cfg, listener=...).run()       # the same, keeping the partial Report on a failure

With pytorch.num_processes > 1 (data parallel) `measurement_for(cfg)` gives the lead of
llem_mlflow/distributed.py, whose ranks use this core's hooks: `edge()` at each phase edge,
`prepare()` for their share of the batches, `collect()` for every rank's requests.
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from llem_mlflow import __version__
from llem_mlflow import metrics_registry as registry
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.config.params import config_hash
from llem_mlflow.errors import ConfigError
from llem_mlflow.progress import progress
from llem_mlflow.redact import redact
from llem_mlflow.report import Listener, NoListener, Report

# Passes over the prompt set in one measured window, at most (measure.min_duration_s repeats it).
MAX_PASSES = 10_000

if TYPE_CHECKING:
    from llem_mlflow.bench.device import Hardware
    from llem_mlflow.bench.generation import Batch, Generator, RequestRecord
    from llem_mlflow.bench.loading import LoadedModel
    from llem_mlflow.energy.monitor import EnergyMonitor
    from llem_mlflow.energy.readings import PhaseEnergy


def measure(cfg: ExperimentConfig, **options: Any) -> Report:
    """Run the experiment and return its Report (options: see Measurement). Raises on a failure."""
    return measurement_for(cfg, **options).run()


def measurement_for(cfg: ExperimentConfig, **options: Any) -> Measurement:
    """One process, or with pytorch.num_processes > 1 the data-parallel lead (distributed.py)."""
    if (cfg.pytorch.num_processes or 1) > 1:
        from llem_mlflow.distributed import LeadMeasurement

        return LeadMeasurement(cfg, **options)
    return Measurement(cfg, **options)


class Measurement:
    data_parallel = False  # True in the ranks of a data-parallel run (distributed.py)

    def __new__(cls, cfg: ExperimentConfig, **options: Any) -> Measurement:
        # scenario: online measures through its own subclass (runner_online.py); every caller
        # that writes Measurement(cfg, ...) gets the right one.
        if cls is Measurement and cfg.scenario == "online":
            from llem_mlflow.runner_online import OnlineMeasurement

            cls = OnlineMeasurement
        return super().__new__(cls)

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        model_path: str | None = None,
        quiet: bool = False,
        nvml: Any = None,
        hardware: Hardware | None = None,
        listener: Listener | None = None,
        workdir: Path | None = None,
    ):
        """`hardware`: the machine's GPUs (llem_mlflow.bench.device.Hardware; None: the real one, torch
        and pynvml; tests pass a fake GPU machine). `nvml`: only the NVML library replaced. `workdir`:
        where the meters keep their files (default: a new temporary folder; `cleanup()` removes it)."""
        if (cfg.pytorch.num_processes or 1) > 1 and not self.data_parallel:
            raise ConfigError("pytorch.num_processes > 1 runs in several processes: use measure(cfg) or measurement_for(cfg)")
        if hardware is None:
            from llem_mlflow.bench.device import TorchCuda

            hardware = TorchCuda()
        self.hardware = hardware
        self.devices: list[int] = []  # CUDA devices holding the model: synchronized at every edge
        self.cfg = cfg
        self.model_path = model_path
        self.quiet = quiet
        self.nvml = nvml
        self.listener: Listener = listener or NoListener()
        self.report = Report(cfg, workdir=workdir or Path(tempfile.mkdtemp(prefix="llem-run-")))
        self.monitor: EnergyMonitor | None = None
        from llem_mlflow.bench.memory import PhaseMemory

        self.memory = PhaseMemory()
        self._cut_short: PhaseEnergy | None = None  # the energy window a failure closed early
        self._split_notes: list[str] = []  # prefill/decode figures a trial could not give, and why
        self._split_warnings: list[str] = []  # trials whose decode energy came out <= 0

    # --- the phases ------------------------------------------------------------------
    def run(self) -> Report:
        from llem_mlflow.bench.environment import environment_snapshot, environment_tags
        from llem_mlflow.energy.monitor import EnergyMonitor

        cfg = self.cfg
        self.report.durations_s["startup"] = process_age_s()  # imports and config: the fixed cost before phase 1
        self.add_tags({**identity_tags(cfg), "llem.memory.rss_method": self.memory.method})
        try:
            with self.phase("environment"):
                self.report.resolved["environment"] = environment_snapshot()
                self.add_tags(environment_tags(self.report.resolved["environment"]))
            self.monitor = EnergyMonitor(cfg, self.hardware, nvml=self.nvml, workdir=self.report.workdir / "energy-meters")
            self.idle_phase("baseline", self.monitor.measure_baseline)
            with self.phase("load"):
                loaded = self.load_model()
                self.memory.gpu_indices = list(loaded.gpu_indices)  # the load's GPU peaks: since the process started
            self.devices = self.hardware.model_devices(loaded)
            self.monitor.model_loaded(self.devices)  # measure the GPUs the weights occupy from now on
            self.idle_phase("baseline_loaded", self.monitor.measure_loaded_baseline)  # resident, before any kernel
            from llem_mlflow.bench.environment import device_tags

            self.add_tags(device_tags(loaded))
            generator, batches = self.prepare(loaded)
            self.run_first_generate(generator, batches[0])
            if cfg.warmup.enabled:  # disabled: no phase, so no time/warmup_s or energy/warmup_j
                with self.phase("warmup"):
                    self.run_warmup(generator, batches)
            for trial in range(1, cfg.n_trials + 1):
                if trial > 1:
                    self.cool_down()
                self.run_trial(trial, generator, batches)
            self.summarise(loaded)
            self.report.status = "complete"
        finally:
            self.memory.close()
            if self.monitor is not None:
                self.monitor.close()
                self.report.energy = self.monitor.record()
        return self.report

    def idle_phase(self, name: str, measure: Callable[[], bool]) -> None:
        """An idle baseline; skipped (disabled, or no GPU): no phase took place, its tag says why."""
        with self.phase(name, energy=False):
            measured = measure()
        if not measured:
            self.forget_phase(name)

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
        self.report.prompts = prompts
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

    def run_first_generate(self, generator: Generator, batch: Batch) -> None:
        """Cold start: the first generate() after loading (cache allocation, kernel selection,
        compilation) is a phase of its own, kept out of warmup and measure."""
        self.listener.before_window()
        with self.phase("first_generate"):
            records = generator.run_batch(batch)
        if records[0].ttft_ms is not None:  # the rows of a batch share their TTFT; beam search has none
            self.report.metrics["latency/first_ttft_ms"] = records[0].ttft_ms

    def run_warmup(self, generator: Generator, batches: list[Batch]) -> None:
        warm = [batches[i % len(batches)] for i in range(self.cfg.warmup.n_batches)]
        with progress(len(warm), "warmup", self.quiet) as advance:
            for batch in warm:
                generator.run_batch(batch)
                advance()

    def run_trial(self, trial: int, generator: Generator, batches: list[Batch]) -> None:
        """One measured window: whole passes over the prompt set until it lasts measure.min_duration_s."""
        from llem_mlflow.bench.stats import latency_metrics

        phase = trial_phase("measure", trial)
        records: list[RequestRecord] = []
        ran: list[Batch] = []  # the batches the window ran, in order, every pass: what its prefill-only pass repeats
        min_s = self.min_duration_s()
        requests_per_pass = self.cfg.dataset.n  # every rank's requests of a pass (data parallel: not only these batches)
        passes = 0
        self.listener.before_window()
        with self.phase(phase, trial=True) as window:
            start = time.perf_counter()
            while passes < MAX_PASSES:  # bounded: a pass that takes no time cannot loop forever
                label = f"measure {trial}/{self.cfg.n_trials}" + (f" pass {passes + 1}" if passes else "")
                with progress(len(batches), label, self.quiet) as advance:
                    for batch in batches:
                        ran.append(batch)
                        done = generator.run_batch(batch)
                        for record in done:
                            record.trial = trial
                            record.request_index += passes * requests_per_pass  # a repeated pass follows the earlier ones
                        records.extend(done)
                        self.report.records.extend(done)  # batch by batch: what a failure keeps
                        advance()
                passes += 1
                if self.agree(time.perf_counter() - start >= min_s):  # data parallel: every rank stops after the same pass
                    break
        gathered = self.collect(records)  # data parallel: every rank's requests of this trial, on rank 0
        if gathered is not records:
            self.report.records = [r for r in self.report.records if r.trial != trial] + gathered
            records = gathered
        duration = self.report.durations_s[phase]
        metrics = latency_metrics(records)
        metrics.update(throughput_metrics(metrics, len(records), duration))
        metrics["time/measure_s"] = duration
        metrics["measure/passes"] = float(passes)
        metrics.update(window.memory)
        if window.energy is not None:
            metrics.update(self.monitor.metrics(window.energy, int(metrics.get("tokens/output_total", 0)), len(records)))
        self.report.trial_metrics.append(metrics)  # the trial is done: a failure in its prefill pass keeps it
        if self.cfg.measure.prefill_split:
            metrics.update(self.run_prefill(trial, generator, ran, records, window.energy))

    def run_prefill(
        self, trial: int, generator: Generator, batches: list[Batch], measured: list[RequestRecord], energy: PhaseEnergy | None
    ) -> dict[str, float]:
        """The prefill-only pass of a trial (one new token; the batches its measured window ran, in the
        same order and as many times) and the prefill/decode split."""
        from llem_mlflow.bench.stats import summarize
        from llem_mlflow.energy.split import prefill_decode_split

        prefill = generator.prefill_only()
        phase = trial_phase("prefill", trial)
        records: list[RequestRecord] = []
        self.listener.before_window()
        with self.phase(phase, trial=True) as window:
            with progress(len(batches), f"prefill {trial}/{self.cfg.n_trials}", self.quiet) as advance:
                for batch in batches:
                    records.extend(prefill.run_batch(batch))
                    advance()
        records = self.collect(records)  # data parallel: every rank's prefill requests, on rank 0
        metrics = summarize("latency/prefill_ms", [r.e2e_ms for r in records])
        metrics["time/prefill_s"] = self.report.durations_s[phase]
        metrics.update(window.memory)
        decode_tokens = sum(max(r.output_tokens - 1, 0) for r in measured)  # the first token comes from the prefill
        metrics["tokens/decode_total"] = float(decode_tokens)
        split = prefill_decode_split(energy, window.energy, sum(r.input_tokens for r in measured), decode_tokens)
        metrics.update(split.metrics)
        where = "" if self.cfg.n_trials == 1 else f"trial {trial}: "
        if split.note:
            self._split_notes.append(where + split.note)
        if split.not_positive:
            self._split_warnings.append(where + split.not_positive)
        return metrics

    def min_duration_s(self) -> float:
        """measure.min_duration_s, or the meters' own minimum when unset; tagged with where it came from."""
        configured = self.cfg.measure.min_duration_s
        if configured is not None:
            value, source = configured, "measure.min_duration_s"
        else:
            value, source = self.monitor.min_window_s, f"default: {self.monitor.min_window_reason()}"
        if "llem.measure.min_duration" not in self.report.tags:
            self.add_tags({"llem.measure.min_duration": f"{value:g} s ({source})"})
        return value

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
        from llem_mlflow.bench.stats import model_metrics

        report = self.report
        metrics = report.phase_time_metrics()
        comparable = self.comparable_trials()
        metrics.update(summarise_trials(comparable))
        metrics.update(report.metrics)
        metrics.update(model_metrics(loaded))
        metrics.update(gpu_memory_metrics(loaded))
        name = "memory/measure_gpu_peak_allocated_mb"
        peaks = [t[name] for t in report.trial_metrics if name in t]
        if peaks:
            metrics["memory/gpu_peak_allocated_mb"] = max(peaks)  # the highest over the measured trials
        metrics["memory/process_peak_rss_mb"] = self.memory.process_peak_mb()
        report.metrics = metrics
        report.resolved["prompt_order"] = [r.prompt_index for r in report.records if r.trial == 1]
        self.add_tags(self.summary_tags())

    def summary_tags(self) -> dict[str, str]:
        tags = self.monitor.tags()
        tags.update(self.split_tags())
        drift = trial_drift(self.comparable_trials())
        if drift:
            tags["llem.warning.trial_drift"] = drift
        if any(r.ttft_ms is None for r in self.report.records):
            tags["llem.latency.streaming"] = (
                "unavailable: beam search cannot stream, so TTFT and inter-token latency were not measured; "
                "latency/e2e_ms_* is per batch"
            )
        return tags

    def comparable_trials(self) -> list[dict[str, float]]:
        """Each finished trial's figures, less the energy totals (and sources) the trials did not all measure
        the same way: averaging those would mix unlike figures (llem.warning.mixed_sources says so)."""
        trials = self.report.trial_metrics
        if self.monitor is None:
            return list(trials)
        return [{k: v for k, v in t.items() if not self.monitor.dropped_over_trials(k)} for t in trials]

    def split_tags(self) -> dict[str, str]:
        """llem.energy.prefill_split (how decode energy was found, or why a figure is absent) and its warning."""
        if not self.cfg.measure.prefill_split:
            return {}
        text = "decode = measured window - prefill-only pass (same batches, one new token), per trial; same sources"
        tags = {"llem.energy.prefill_split": "; ".join([text, *self._split_notes])}
        if self._split_warnings:
            tags["llem.warning.decode_energy_not_positive"] = " | ".join(self._split_warnings)
        return tags

    # --- failure --------------------------------------------------------------------
    def partial(self, error: str) -> Report:
        """The Report after a failure: what finished is kept, and marked partial.

        Finished trials give the figures (their mean); the requests of a trial the failure cut short
        stay in `records` (requests.csv). Without a finished trial, the cut-short trial's batches give them."""
        from llem_mlflow.bench.stats import latency_metrics

        report = self.report
        report.status, report.error = "partial", error
        partial = report.phase_time_metrics()  # first: a trial mean (time/measure_s) below wins over trial 1's
        partial.update(report.metrics)
        tags = {"llem.failed_phase": report.phase}
        finished = len(report.trial_metrics)
        cut_short = [r for r in report.records if r.trial == finished + 1]
        if finished:
            partial.update(summarise_trials(self.comparable_trials()))
            kept = f"; trial {finished + 1} stopped after {len(cut_short)} request(s), kept in requests.csv" if cut_short else ""
            tags["llem.partial"] = f"metrics cover the {finished} finished trial(s){kept}"
        elif cut_short:
            partial.update(latency_metrics(cut_short))
            if self._cut_short is not None and self.monitor is not None:
                output_tokens = sum(r.output_tokens for r in cut_short)
                partial.update(self.monitor.metrics(self._cut_short, output_tokens, len(cut_short)))
                tags["llem.partial"] = "energy/* and latency/* cover the measured batches that finished before the failure"
        report.metrics = partial
        if self.monitor is not None:
            tags.update(self.monitor.tags())
        report.tags.update(tags)
        return report

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.report.workdir, ignore_errors=True)

    @contextmanager
    def phase(self, name: str, energy: bool = True, trial: bool = False) -> Iterator[_Window]:
        """One phase between two edges: timing and peak memory always, an energy window where asked.

        `trial`: a measured trial's phase, whose memory figures go into that trial's metrics
        (`window.memory`); any other phase's go straight into the run's metrics."""
        self.report.phase = name
        window = _Window()
        monitor = self.monitor if energy else None
        self.hardware.synchronize(self.devices)
        self.memory.begin()
        if monitor is not None:
            monitor.begin(name)
        try:
            self.edge(name, "begin")
            start = time.perf_counter()
            yield window
            self.hardware.synchronize(self.devices)
            self.edge(name, "end")
        except BaseException:
            if monitor is not None:  # close the window so the energy up to the failure is kept
                with suppress(Exception):
                    self._cut_short = monitor.end(name)
            raise
        self.report.durations_s[name] = time.perf_counter() - start
        if monitor is not None:
            window.energy = monitor.end(name)
        window.memory = self.phase_memory(name)  # read after the energy window closed
        if not trial:
            self.report.metrics.update(window.memory)
        self.listener.on_phase_end(self.report, name)

    def phase_memory(self, phase: str) -> dict[str, float]:
        """memory/<phase>_*: peak RSS, torch's GPU peaks, and NVML's sampled used memory."""
        figures = self.memory.end()
        used = self.monitor.peak_memory_used_mb(phase) if self.monitor is not None else None
        if used is not None:
            figures["gpu_peak_used_mb"] = used
        base = phase.split("/")[0]  # measure/2 -> measure: trials share names, their figures are per trial
        return {f"memory/{base}_{key}": value for key, value in figures.items()}

    def forget_phase(self, phase: str) -> None:
        """A phase that did not take place after all (a skipped baseline): no duration, no memory figures."""
        del self.report.durations_s[phase]
        for name in [n for n in self.report.metrics if n.startswith(f"memory/{phase}_")]:
            del self.report.metrics[name]

    # --- hooks for data parallel (llem_mlflow/distributed.py); nothing in one process -----------
    def edge(self, phase: str, when: str) -> None:
        """Called at each phase edge, inside the energy window: "begin" before the clock starts, "end"
        before it stops. Data-parallel ranks wait for each other here, so every rank's phase is one
        window that ends with the slowest rank."""

    def agree(self, done: bool) -> bool:
        """Whether a measured window has run long enough: with data parallel, only when every rank says so."""
        return done

    def collect(self, records: list[RequestRecord]) -> list[RequestRecord]:
        """The requests of a measured window, once its phase ended: every rank's, on rank 0."""
        return records


@dataclass
class _Window:
    energy: PhaseEnergy | None = None
    memory: dict[str, float] = field(default_factory=dict)  # memory/<phase>_* of the finished phase


# --- small pure helpers ------------------------------------------------------------------
def identity_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """What the run is: tool version, config hash, model, and the user's own tags (secrets redacted)."""
    logged = redacted_config(cfg)
    return {"llem.version": __version__, "llem.config_hash": config_hash(logged), "llem.model": cfg.model, **logged.tags}


def process_age_s() -> float:
    import psutil

    return max(time.time() - psutil.Process().create_time(), 0.0)


def trial_phase(name: str, trial: int) -> str:
    """measure, measure/2, ...: a repeated phase's name in each trial."""
    return name if trial == 1 else f"{name}/{trial}"


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


def trial_drift(trials: list[dict[str, float]]) -> str | None:
    """llem.warning.trial_drift: the key metrics that trended or spread too much over the trials."""
    if len(trials) < 2:
        return None
    from llem_mlflow.stats import drift

    found = []
    for name in registry.TRIAL_SPREAD:
        if all(name in t for t in trials):
            problem = drift([t[name] for t in trials])
            if problem:
                found.append(f"{name}: {problem}")
    return "; ".join(found) or None


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
