"""EnergyMonitor: the one object the runner uses to measure energy, phase by phase.

It owns one window per phase over its meters (NVML for the GPUs, RAPL counters
for CPU and RAM where readable, CodeCarbon for CPU, RAM and the grid's carbon
intensity), the idle baselines, the power sampler, the CPU-contention snapshots
and the validity warnings. It never raises for a meter that fails mid-run: the
quantity goes absent and a tag says why. It raises EnergyError only for bad
input found at construction (energy.gpu: nvml without NVML, an unknown
country code).

The machine comes in through one object, `hardware` (llem_mlflow.bench.device.Hardware):
the NVML library, the CUDA devices with their UUIDs, and a synchronize over devices. The
GPUs measured are first the ones the config names; once the model is loaded,
`model_loaded(devices)` switches to the ones its weights occupy.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llem_mlflow.energy import contention
from llem_mlflow.energy import warnings as checks
from llem_mlflow.energy.baseline import BEFORE_LOAD, LOADED, Baseline, dynamic_energy_j, measure_idle_power
from llem_mlflow.energy.codecarbon_source import (
    JOULES_PER_KWH,
    CodeCarbonSource,
    CodeCarbonUnavailable,
    country_problem,
)
from llem_mlflow.energy.devices import (
    CudaDevice,
    GpuTarget,
    NvmlBoard,
    match_by_uuid,
    targets_from_environment,
    visible_entries,
    wanted_cuda_indices,
)
from llem_mlflow.energy.nvml import (
    NVML_TEMPERATURE_GPU,
    NvmlError,
    NvmlGpuSource,
    PowerSampler,
    integrate_power_j,
    open_device,
    open_nvml,
    read_boards,
    read_counter_j,
    running_pids,
    samples_in,
)
from llem_mlflow.energy.quality import (
    SOURCE_METRIC_PREFIXES,
    TOTAL_METRICS,
    differing_sources,
    mixed_sources,
    quality_tags,
    with_failures,
)
from llem_mlflow.energy.rapl import RaplSource, RaplUnavailable
from llem_mlflow.energy.readings import GpuSample, PhaseEnergy, now_ms
from llem_mlflow.energy.timeline import downsampling_note, metric_histories
from llem_mlflow.errors import EnergyError

log = logging.getLogger(__name__)
MAPPING_BY_ENVIRONMENT = (
    "CUDA_VISIBLE_DEVICES over NVML's order (CUDA is not available in this process, so no UUIDs: "
    "exact only with CUDA_DEVICE_ORDER=PCI_BUS_ID or identical boards)"
)

# Windows whose figures are published: they get the validity checks (measured trials, prefill passes).
CHECKED_PHASES = ("measure", "prefill")
# The shortest measured window the meters support (measure.min_duration_s's default and the
# short_window threshold). NVML's energy counter advances about every 100 ms, so each edge of a
# window is uncertain by up to one period: 5 s (50 periods) keeps both edges under 4% of the
# window. Without a GPU, CodeCarbon samples CPU load and memory once a second (RAPL updates every
# millisecond): 1 s holds one full sample and keeps a CPU quickstart fast.
MIN_WINDOW_GPU_S = 5.0
MIN_WINDOW_HOST_S = 1.0


@dataclass
class EnergyRecord:
    """Everything the energy artifacts are made from: samples, phase windows, per-phase figures."""

    samples: list[GpuSample]
    phases: dict[str, tuple[int, int]]  # phase -> (start_ms, end_ms)
    baseline_w: dict[int, float]  # idle power per GPU
    codecarbon_csv: Path | None
    phases_summary: dict[str, Any]
    windows_s: dict[str, tuple[float, float]]  # phase -> monotonic (start, end), for integration

    def sampled_energy_j(self, phase: str) -> float | None:
        """Cross-check: sampled power integrated over a finished phase, all GPUs (None without samples)."""
        if phase not in self.windows_s or not self.samples:
            return None
        window = samples_in(self.samples, *self.windows_s[phase])
        parts = [integrate_power_j(window, gpu) for gpu in sorted({s.gpu for s in self.samples})]
        return None if any(p is None for p in parts) else sum(parts)


def own_process_tree() -> set[int]:
    """This process and the ones it started (data-parallel ranks): their GPU work is the run's own."""
    import psutil

    me = psutil.Process()
    pids = {me.pid}
    try:
        pids.update(child.pid for child in me.children(recursive=True))
    except psutil.Error:
        pass
    return pids


class EnergyMonitor:
    def __init__(
        self, cfg: Any, hardware: Any = None, *, nvml: Any = None, workdir: Path | None = None, rapl_root: Path | None = None
    ):
        """`hardware`: the machine (default: the real one, torch + pynvml); `nvml` replaces its NVML
        library. `workdir` holds CodeCarbon's CSV until write_artifacts copies it (the caller removes
        it; without one, a temporary folder is made and left to the system). `rapl_root`: the powercap
        folder (None: /sys/class/powercap; tests pass a fake tree)."""
        if hardware is None:
            from llem_mlflow.bench.device import TorchCuda

            hardware = TorchCuda()
        self.cfg = cfg
        self.hardware = hardware
        self._readings: dict[str, PhaseEnergy] = {}
        self._phases: dict[str, tuple[int, int]] = {}  # phase -> (start_ms, end_ms), for the plot
        self._windows_s: dict[str, tuple[float, float]] = {}  # phase -> monotonic (start, end)
        self._open: tuple[str, int, float] | None = None  # (phase, start_ms, monotonic start)
        self._pids_at_begin: dict[int, list[int] | None] = {}
        self._cpu_at_begin: contention.CpuSnapshot | None = None
        self._gpu_begin_error: str | None = None
        self._rapl_begin_error: str | None = None
        self._baselines: dict[str, Baseline] = {}  # idle_before_load / idle_loaded
        self._baseline_notes: dict[str, str] = {BEFORE_LOAD: "skipped: measure_baseline() was not called"}
        self._run_warnings: dict[str, str] = {}  # warnings about the whole run (gpu_mismatch)
        self._closed = False

        self._nvml, self._devices, self._sampler, self._gpu = None, [], None, None
        self._boards: list[NvmlBoard] = []
        self._cuda: list[CudaDevice] | None = None
        self.devices_in_use: list[int] = []  # CUDA indices synchronized at each edge (the model's, once loaded)
        self._configured: list[int] = []  # CUDA indices the config names
        self._mapping = "uuid"
        self._driver = "unknown"
        self.gpu_reason = self._open_gpus(nvml if nvml is not None else hardware.nvml_library())
        if self.gpu_reason and cfg.energy.gpu == "nvml":
            self.close()
            raise EnergyError(
                f"energy.gpu is 'nvml' but GPU energy cannot be measured here: {self.gpu_reason}. "
                "Fix the GPU setup, or set energy.gpu: auto to run without GPU energy"
            )

        self._codecarbon: CodeCarbonSource | None = None
        self.codecarbon_reason: str | None = "off: energy.codecarbon is false"
        if cfg.energy.codecarbon:
            problem = country_problem(cfg.energy.country_iso_code)
            if problem:
                self.close()
                raise EnergyError(problem)
            gpu_ids = [d.target.nvml_index for d in self._devices] or None
            workdir = workdir or Path(tempfile.mkdtemp(prefix="llem-energy-"))
            self._codecarbon = CodeCarbonSource(
                cfg.energy.country_iso_code, workdir / "codecarbon", gpu_ids, scope=cfg.energy.codecarbon_scope
            )
            self.codecarbon_reason = None

        self._rapl: RaplSource | None = None
        self.rapl_reason: str | None = "off: energy.rapl is false"
        if cfg.energy.rapl:
            try:
                self._rapl = RaplSource.open(rapl_root)
                self.rapl_reason = None
            except RaplUnavailable as exc:
                self.rapl_reason = str(exc)

    # --- setup -----------------------------------------------------------------

    def _open_gpus(self, lib: Any) -> str | None:
        """Open NVML and the GPUs the config puts the model on; the reason when GPU energy will be absent."""
        if self.cfg.energy.gpu == "off":
            return "energy.gpu is off"
        try:
            self._nvml = open_nvml(lib)
            self._boards = read_boards(self._nvml)
            try:
                self._cuda = self.hardware.cuda_devices()
            except Exception as exc:  # a broken CUDA setup: say so, never crash the run here
                return f"cannot list the CUDA devices: {type(exc).__name__}: {exc}"
            n_visible = len(self._cuda) if self._cuda is not None else len(self._visible_entries())
            wanted, reason = wanted_cuda_indices(
                self.cfg.pytorch.device_map, n_visible, self.cfg.pytorch.num_processes or 1  # data parallel: every rank's GPU
            )
            self._configured = wanted  # synchronized only once the model is on them: no CUDA context before
            if reason:
                return reason
            targets, reason = self._targets(wanted)
            if reason:
                return reason
            self._devices = [open_device(self._nvml, t) for t in targets]
            driver = self._nvml.optional("nvmlSystemGetDriverVersion")  # read now: tags() may come after close()
            self._driver = driver.decode() if isinstance(driver, bytes) else str(driver or "unknown")
        except NvmlError as exc:
            return str(exc)
        self._start_sources()
        return None

    def _start_sources(self) -> None:
        """The power sampler and the GPU energy source over the GPUs measured now."""
        self._sampler = PowerSampler(self._nvml, self._devices, self.cfg.energy.sample_interval_ms / 1000.0)
        self._gpu = NvmlGpuSource(self._nvml, self._devices, self._sampler, self._synchronize)

    def _synchronize(self) -> None:
        """At each window edge: every GPU the model occupies (none before it is loaded)."""
        self.hardware.synchronize(self.devices_in_use)

    def _visible_entries(self) -> list[str]:
        return visible_entries(os.environ.get("CUDA_VISIBLE_DEVICES"), len(self._boards))

    def _targets(self, cuda_indices: list[int]) -> tuple[list[GpuTarget], str | None]:
        """The NVML boards behind these CUDA indices, by UUID (or the environment without CUDA)."""
        if self._cuda is None:
            self._mapping = MAPPING_BY_ENVIRONMENT
            targets, reason = targets_from_environment(
                cuda_indices, os.environ.get("CUDA_VISIBLE_DEVICES"), [b.uuid for b in self._boards]
            )
            shared = [t for t in targets if self._boards[t.nvml_index].mig_uuids]
            if shared and not reason:
                return [], f"cuda:{shared[0].cuda_index} is on board {shared[0].uuid}, whose MIG mode is on"
            return targets, reason
        by_index = {d.index: d for d in self._cuda}
        missing = [i for i in cuda_indices if i not in by_index]
        if missing:
            return [], f"cuda:{missing[0]} is not among the {len(self._cuda)} CUDA device(s) of this process"
        return match_by_uuid([by_index[i] for i in cuda_indices], self._boards)

    def model_loaded(self, cuda_indices: list[int]) -> None:
        """The model's weights occupy these CUDA devices: measure them from now on (warn when they
        are not the ones the config named)."""
        self.devices_in_use = sorted(cuda_indices)
        if self._nvml is None or self._closed:
            return
        if self.devices_in_use != sorted(self._configured):
            named = ", ".join(f"cuda:{i}" for i in self._configured) or "no GPU"
            actual = ", ".join(f"cuda:{i}" for i in self.devices_in_use) or "no GPU (CPU)"
            self._run_warnings["gpu_mismatch"] = (
                f"the config (pytorch.device_map {self.cfg.pytorch.device_map!r}) names {named}, but the model's "
                f"weights occupy {actual}: energy is measured on the GPUs the weights occupy"
            )
        if not self.devices_in_use:
            self._drop_gpus("the model's weights are on no GPU")
            return
        targets, reason = self._targets(self.devices_in_use)
        if reason:
            self._drop_gpus(reason)
            return
        if targets != [d.target for d in self._devices]:
            try:
                devices = [open_device(self._nvml, t) for t in targets]
            except NvmlError as exc:
                self._drop_gpus(str(exc))
                return
            self._devices = devices
            if self._sampler is None:  # no GPU was measurable before the load
                self.gpu_reason = None
                self._start_sources()
            self._sampler.set_devices(devices)
            self._gpu.set_devices(devices)
            if self._codecarbon is not None:
                self._codecarbon.gpu_ids = [d.target.nvml_index for d in devices]

    def _drop_gpus(self, reason: str) -> None:
        """GPU energy becomes absent from here on (the samples taken so far stay in the timeline)."""
        self.gpu_reason = reason
        self._gpu = None
        self._devices = []
        if self._sampler is not None:
            self._sampler.stop()

    @property
    def min_window_s(self) -> float:
        """The shortest measured window these meters support (see MIN_WINDOW_GPU_S)."""
        return MIN_WINDOW_GPU_S if self._gpu is not None else MIN_WINDOW_HOST_S

    def min_window_reason(self) -> str:
        if self._gpu is not None:
            return "NVML GPU energy: 50 periods of its ~100 ms counter, so each edge weighs under 2%"
        return "no GPU energy: one CodeCarbon sampling period (1 s)"

    # --- windows -----------------------------------------------------------------

    def measure_baseline(self) -> bool:
        """Mean idle power per GPU over baseline.duration_s, before the model loads; False when skipped."""
        return self._measure_idle(BEFORE_LOAD, "baseline")

    def measure_loaded_baseline(self) -> bool:
        """The same with the model resident (CUDA context up, weights in memory): the idle power that
        dynamic energy subtracts. Call it after model_loaded(); False when skipped."""
        return self._measure_idle(LOADED, "baseline_loaded")

    def _measure_idle(self, kind: str, phase: str) -> bool:
        if not self.cfg.baseline.enabled:
            self._baseline_notes[kind] = "skipped: baseline.enabled is false"
            return False
        if self._gpu is None:
            self._baseline_notes[kind] = f"skipped: no GPU measured ({self.gpu_reason})"
            return False
        start_ms, start_s = now_ms(), time.monotonic()
        self._sampler.start()
        try:
            baseline = measure_idle_power(self._gpu, self.cfg.baseline.duration_s, kind=kind)
            self._baselines[kind] = baseline
            self._baseline_notes[kind] = f"measured: {baseline.duration_s:.1f} s idle, {baseline.method}"
        except NvmlError as exc:
            self._baseline_notes[kind] = f"failed: {exc}"
        self._phases[phase] = (start_ms, now_ms())
        self._windows_s[phase] = (start_s, time.monotonic())
        return True

    def _dynamic_baseline(self) -> Baseline | None:
        """The idle power dynamic energy subtracts: with the model resident when measured, else before
        the load; only one measured on the GPUs measured now."""
        gpus = {d.target.cuda_index for d in self._devices}
        for kind in (LOADED, BEFORE_LOAD):
            baseline = self._baselines.get(kind)
            if baseline is not None and set(baseline.power_w) == gpus:
                return baseline
        return None

    def baseline_temperature_c(self) -> float | None:
        """Mean idle temperature of the hottest measured GPU during the baseline (None: no baseline)."""
        phase = next((p for k, p in ((BEFORE_LOAD, "baseline"), (LOADED, "baseline_loaded")) if k in self._baselines), None)
        if phase is None or phase not in self._windows_s:
            return None
        window = samples_in(self._sampler.samples, *self._windows_s[phase])
        means = []
        for d in self._devices:
            temps = [s.temperature_c for s in window if s.gpu == d.target.cuda_index and s.temperature_c is not None]
            if temps:
                means.append(sum(temps) / len(temps))
        return max(means) if means else None

    def gpu_temperature_c(self) -> float | None:
        """Current temperature of the hottest measured GPU, read now (None: unavailable). Never raises."""
        if self._nvml is None or self._closed:
            return None
        temps = [self._nvml.optional("nvmlDeviceGetTemperature", d.handle, NVML_TEMPERATURE_GPU) for d in self._devices]
        temps = [float(t) for t in temps if t is not None]
        return max(temps) if temps else None

    def gpu_counter_j(self) -> dict[int, float] | None:
        """Each measured GPU's energy counter now, in J (None: no counter here, or the read failed).

        No synchronize: for wall-clock sub-windows of a running phase (the online steady window)."""
        if self._gpu is None or self._closed or self._gpu.method != "nvml_counter":
            return None
        try:
            return {d.target.cuda_index: read_counter_j(self._nvml, d) for d in self._devices}
        except NvmlError:
            return None

    def gpu_energy_between(
        self, start_s: float, end_s: float, start_counter: dict[int, float] | None, end_counter: dict[int, float] | None
    ) -> tuple[dict[int, float] | None, str]:
        """GPU energy (J per GPU) over [start_s, end_s] (monotonic) inside a phase, and how it was measured
        (or `unavailable: why`): the counter readings at the edges, else the sampled power."""
        from llem_mlflow.energy.subwindow import counter_energy_j, power_energy_j

        if self._gpu is None:
            return None, f"unavailable: {self.gpu_reason}"
        energy = counter_energy_j(start_counter, end_counter)
        if energy is not None:
            return energy, "nvml_counter"
        samples = self._sampler.samples
        parts = {d.target.cuda_index: power_energy_j(samples, d.target.cuda_index, start_s, end_s) for d in self._devices}
        if any(joules is None for joules in parts.values()):
            return None, "unavailable: no usable energy counter readings at the edges and too few power samples around them"
        return parts, "+".join(sorted({d.power_method for d in self._devices}))

    def begin(self, phase: str) -> None:
        if self._open is not None:
            raise EnergyError(f"energy window {self._open[0]!r} is still open: end it before beginning {phase!r}")
        if self._codecarbon is not None:
            self._codecarbon.begin(phase)  # first: building its tracker takes a while, outside the GPU window
        self._rapl_begin_error = None
        if self._rapl is not None:
            try:
                self._rapl.begin()
            except RaplUnavailable as exc:
                self._rapl_begin_error = str(exc)
        if phase.startswith(CHECKED_PHASES):
            self._cpu_at_begin = contention.snapshot()
        gpu_error, start_s = None, time.monotonic()  # before the GPU edge, so its power tick is inside
        if self._gpu is not None:
            self._sampler.start()
            if phase.startswith(CHECKED_PHASES):
                self._pids_at_begin = {d.target.cuda_index: running_pids(self._nvml, d) for d in self._devices}
            try:
                self._gpu.begin()
            except NvmlError as exc:  # e.g. the synchronize or a counter read failed
                gpu_error = str(exc)
        self._open = (phase, now_ms(), start_s)
        self._gpu_begin_error = gpu_error

    def end(self, phase: str) -> PhaseEnergy:
        if self._open is None or self._open[0] != phase:
            raise EnergyError(f"energy window {phase!r} was not begun")
        _, start_ms, start_s = self._open
        self._open = None
        reading = PhaseEnergy(phase=phase, start_ms=start_ms, end_ms=0, duration_s=0.0)
        if self._gpu is None:
            reading.gpu_reason = self.gpu_reason
        elif self._gpu_begin_error:
            reading.gpu_reason = self._gpu_begin_error
        else:
            try:
                reading.gpu = self._gpu.end()
            except NvmlError as exc:
                reading.gpu_reason = str(exc)
        end_s = time.monotonic()  # the GPU edge: samples after it (CodeCarbon's stop, on a busy host) are not this window's
        reading.duration_s = reading.gpu.duration_s if reading.gpu else end_s - start_s
        reading.end_ms = now_ms()
        if phase.startswith(CHECKED_PHASES) and self._cpu_at_begin is not None:
            reading.cpu_load = contention.cpu_load(self._cpu_at_begin, contention.snapshot())
        if self._rapl is None:
            reading.rapl_reason = self.rapl_reason
        elif self._rapl_begin_error:
            reading.rapl_reason = self._rapl_begin_error
        else:
            try:
                reading.rapl = self._rapl.end()
            except RaplUnavailable as exc:
                reading.rapl_reason = str(exc)
        if self._codecarbon is None:
            reading.host_reason = self.codecarbon_reason
        else:
            try:
                reading.host = self._codecarbon.end()
            except CodeCarbonUnavailable as exc:
                reading.host_reason = str(exc)
        if phase.startswith("measure"):
            self._subtract_idle(reading)
        if phase.startswith(CHECKED_PHASES):
            reading.warnings = self._window_warnings(reading, start_s)
        self._readings[phase] = reading
        self._phases[phase] = (start_ms, reading.end_ms)
        self._windows_s[phase] = (start_s, end_s)
        return reading

    def _subtract_idle(self, reading: PhaseEnergy) -> None:
        baseline = self._dynamic_baseline()
        if baseline is None:
            return
        reading.gpu_baseline_w = baseline.total_w
        if reading.gpu is not None:
            reading.gpu_dynamic_j = dynamic_energy_j(reading.gpu.total_j, baseline.total_w, reading.gpu.duration_s)

    def _window_warnings(self, reading: PhaseEnergy, start_s: float) -> dict[str, str]:
        found: dict[str, str | None] = {
            "short_window": checks.short_window(reading.duration_s, self.min_window_s, self.min_window_reason()),
            "cpu_contention": contention.cpu_contention(reading.cpu_load),
        }
        if reading.gpu is not None:
            found.update(reading.gpu.notes)
        if reading.gpu_dynamic_j is not None and reading.gpu_dynamic_j < 0:
            found["negative_dynamic_energy"] = (
                f"dynamic GPU energy is {reading.gpu_dynamic_j:.1f} J: the window drew less than the idle baseline "
                f"({reading.gpu_baseline_w:.1f} W); idle power drifts with temperature and clocks, so the work's own "
                "energy is within that noise of 0 here. Logged as measured, not floored"
            )
        if self._gpu is not None:
            window = samples_in(self._sampler.samples, start_s - 0.5, time.monotonic())
            pids_at_end = {d.target.cuda_index: running_pids(self._nvml, d) for d in self._devices}
            pids = {
                gpu: None if pids_at_end[gpu] is None else (self._pids_at_begin.get(gpu) or []) + pids_at_end[gpu]
                for gpu in pids_at_end
            }
            found["throttling"] = checks.throttling(window)
            found["temperature_rise"] = checks.temperature_rise(window)
            found["other_processes"] = checks.other_processes(pids, own_process_tree())
            found["persistence_mode_off"] = checks.persistence_mode_off(
                {d.target.cuda_index: d.persistence_mode for d in self._devices}
            )
        return {name: text for name, text in found.items() if text}

    def close(self) -> None:
        """Stop the sampler and CodeCarbon and shut NVML down. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        for step in (
            lambda: self._sampler and self._sampler.stop(),
            lambda: self._rapl and self._rapl.close(),
            lambda: self._codecarbon and self._codecarbon.close(),
            lambda: self._nvml and self._nvml.optional("nvmlShutdown"),
        ):
            try:
                step()
            except Exception as exc:  # closing must never mask the run's real outcome
                log.warning("energy monitor close: %s", exc)

    # --- results ---------------------------------------------------------------------

    def metrics(self, measured: PhaseEnergy, output_tokens: int, requests: int) -> dict[str, float]:
        """MLflow metrics for the measured window; a quantity not measured is absent, never 0."""
        m: dict[str, float] = {}
        sources = measured.sources

        def per_token(name: str, joules: float | None) -> None:
            if joules is not None and output_tokens > 0:
                m[name] = joules / output_tokens

        if measured.gpu is not None:
            m["energy/gpu_j"] = measured.gpu.total_j
            for gpu, joules in sorted(measured.gpu.energy_j.items()):
                m[f"energy/gpu{gpu}_j"] = joules
            per_token("energy/gpu_j_per_output_token", measured.gpu.total_j)
            if measured.gpu.sampled_j is not None and measured.gpu.method == "nvml_counter":
                m["energy/gpu_sampled_j"] = measured.gpu.sampled_j
            if measured.gpu.mean_power_w is not None:
                m["power/gpu_mean_w"] = measured.gpu.mean_power_w
            if measured.gpu.peak_power_w is not None:
                m["power/gpu_peak_w"] = measured.gpu.peak_power_w
        if measured.gpu_dynamic_j is not None:
            m["energy/gpu_dynamic_j"] = measured.gpu_dynamic_j
        baseline = self._dynamic_baseline()
        if baseline is not None:
            m["power/gpu_baseline_w"] = baseline.total_w
        gpus = {d.target.cuda_index for d in self._devices}
        for kind, name in ((BEFORE_LOAD, "power/idle_gpu_w_before_load"), (LOADED, "power/idle_gpu_w_loaded")):
            idle = self._baselines.get(kind)
            if idle is not None and set(idle.power_w) == gpus:  # another set of GPUs is not comparable
                m[name] = idle.total_w
        for source in ("cpu", "ram"):
            if source in sources:
                m[f"energy/{source}_j"] = sources[source].joules
        total_j = measured.total_j
        if total_j is not None:
            m["energy/total_j"] = total_j
            per_token("energy/j_per_output_token", total_j)
            if requests > 0:
                m["energy/j_per_request"] = total_j / requests
            intensity = self._grid_kg_per_kwh(measured)
            if intensity is not None:  # from the energy reported here, so emissions and energy agree
                m["emissions/kg_co2eq"] = total_j / JOULES_PER_KWH * intensity
                m["emissions/grid_intensity_g_per_kwh"] = intensity * 1000.0
        measured_j = measured.measured_j
        if measured_j is not None:
            m["energy/measured_j"] = measured_j
            per_token("energy/measured_j_per_output_token", measured_j)
        per_token("energy/dynamic_j_per_output_token", measured.gpu_dynamic_j)
        if measured.cpu_load is not None:
            m["cpu/own_util_pct"] = measured.cpu_load.own_pct
            m["cpu/others_util_pct"] = measured.cpu_load.others_pct
        # A phase total that lacks a source another phase read would look like less energy: left out.
        every_source = {name for reading in self._readings.values() for name in reading.sources}
        for phase in ("load", "first_generate", "warmup"):
            reading = self._readings.get(phase)
            if reading is not None and reading.total_j is not None and set(reading.sources) == every_source:
                m[f"energy/{phase}_j"] = reading.total_j
        return m

    @staticmethod
    def _grid_kg_per_kwh(reading: PhaseEnergy) -> float | None:
        """The intensity CodeCarbon applied in this window; None without CodeCarbon or when it logged errors."""
        host = reading.host
        if host is None or host.emissions_reason is not None:
            return None
        return host.kg_per_kwh

    def _measured(self) -> list[PhaseEnergy]:
        return [r for phase, r in self._readings.items() if phase.startswith("measure")]

    def tags(self) -> dict[str, str]:
        """llem.energy.*, llem.gpu.*, llem.timeline.* and llem.warning.* tags."""
        measured = self._measured()
        tags = {
            "llem.energy.gpu_method": self._gpu_method(measured),
            "llem.energy.cpu_method": self._host_method(measured, "cpu"),
            "llem.energy.ram_method": self._host_method(measured, "ram"),
            "llem.energy.rapl": f"unavailable: {self.rapl_reason}" if self._rapl is None else f"readable: {self._rapl.describe()}",
            "llem.energy.baseline": self._baseline_tag(),
        }
        if measured:
            tags.update(quality_tags(measured))
            emissions_reasons = [r.host.emissions_reason for r in measured if r.host and r.host.emissions_reason]
            if emissions_reasons:
                tags["llem.energy.emissions"] = f"unavailable: {emissions_reasons[-1]}"
        if self._codecarbon is not None:
            tags.setdefault(
                "llem.energy.emissions",
                f"energy/total_j x the grid intensity CodeCarbon uses for {self.cfg.energy.country_iso_code} (offline)",
            )
            tags["llem.energy.codecarbon_scope"] = self._codecarbon.scope
        if self._sampler is not None:
            if self._sampler.error:
                tags["llem.energy.sampler"] = self._sampler.error
            note = downsampling_note(self._sampler.samples)
            if note:
                tags["llem.timeline.downsampled"] = note
        tags.update(self._gpu_tags())
        for name, text in self._run_warnings.items():
            tags[f"llem.warning.{name}"] = text
        checked = [r for phase, r in self._readings.items() if phase.startswith(CHECKED_PHASES)]
        for reading in checked:
            for name, text in reading.warnings.items():
                prefix = "" if len(checked) == 1 else f"{reading.phase}: "
                key = f"llem.warning.{name}"
                tags[key] = f"{tags[key]} | {prefix}{text}" if key in tags else f"{prefix}{text}"
        mixed = mixed_sources(measured)
        if mixed:
            tags["llem.warning.mixed_sources"] = mixed
        return {k: v[:5000] for k, v in tags.items()}  # MLflow's tag value limit is generous, but not infinite

    def _baseline_tag(self) -> str:
        """How the idle baselines went, and which one dynamic energy subtracts."""
        text = self._baseline_notes[BEFORE_LOAD]
        if self._baseline_notes.get(LOADED, text) != text:
            text += f"; with the model resident: {self._baseline_notes[LOADED]}"
        chosen = self._dynamic_baseline()
        if chosen is not None:
            where = "with the model resident" if chosen.kind == LOADED else "before the model loaded"
            text += f"; dynamic energy subtracts the idle power measured {where} ({chosen.total_w:.1f} W)"
        elif self._baselines:
            text += "; no idle baseline on the GPUs measured now: dynamic energy absent"
        return text

    def dropped_over_trials(self, name: str) -> bool:
        """Whether a metric must stay out of the summary over trials: the trials measured its sources differently."""
        differing = differing_sources(self._measured())
        if not differing:
            return False
        if name in TOTAL_METRICS:
            return True
        return any(name.startswith(prefix) for source in differing for prefix in SOURCE_METRIC_PREFIXES[source])

    def _gpu_method(self, measured: list[PhaseEnergy]) -> str:
        if self._gpu is None:
            return f"unavailable: {self.gpu_reason}"
        methods = sorted({r.gpu.method for r in measured if r.gpu is not None})
        failures = [(r.phase, r.gpu_reason) for r in measured if r.gpu is None and r.gpu_reason]
        if failures and not methods:
            return f"unavailable: {failures[-1][1]}"
        return with_failures("+".join(methods) if methods else self._gpu.method, failures)

    def _host_method(self, measured: list[PhaseEnergy], source: str) -> str:
        """How cpu or ram energy was read: RAPL's counters, CodeCarbon's figure, or why neither."""
        rapl_domains = self._rapl.describe() if self._rapl is not None else ""
        labels = [d for d in rapl_domains.split(", ") if d.startswith("package" if source == "cpu" else "dram")]
        if measured:
            meters = {r.sources[source].meter for r in measured if source in r.sources}
        elif labels:  # no measured window yet (a failure before it): the meter that would have read it
            meters = {"rapl"}
        else:
            meters = {"codecarbon"} if self._codecarbon is not None else set()
        failures = [(r.phase, self._source_reason(r, source)) for r in measured if source not in r.sources]
        parts = []
        if "rapl" in meters:
            parts.append(f"rapl ({', '.join(labels)})")
        if "codecarbon" in meters:
            parts.append(self._codecarbon_method(source))
        if not parts:
            reasons = [reason for _, reason in failures] or [self._source_reason(None, source)]
            return f"unavailable: {reasons[-1]}"
        return with_failures(" + ".join(parts), failures)

    def _codecarbon_method(self, source: str) -> str:
        cc = self._codecarbon
        scope = f"{cc.scope} scope"
        if source == "cpu":
            text = f"CodeCarbon {cc.cpu_method or 'not started yet'}, {scope}"
        else:
            memory = "this process tree's resident memory" if cc.scope == "process" else "the installed memory"
            text = f"CodeCarbon estimate: its RAM power model on {memory}"
        if self._rapl is None:
            text += f"; RAPL unavailable: {self.rapl_reason}"
        elif source == "ram":
            text += "; RAPL has no dram domain here"
        return text

    def _source_reason(self, reading: PhaseEnergy | None, source: str) -> str:
        """Why a cpu/ram figure is missing from a window: RAPL's reason and CodeCarbon's."""
        rapl = (reading.rapl_reason if reading is not None else None) or self.rapl_reason
        if reading is not None and reading.rapl is not None and source == "ram":
            rapl = "no dram domain"
        codecarbon = (reading.host_reason if reading is not None else None) or self.codecarbon_reason
        if reading is not None and reading.host is not None and source == "cpu" and reading.host.cpu_reason:
            codecarbon = reading.host.cpu_reason
        return f"RAPL: {rapl}; CodeCarbon: {codecarbon}"

    def _gpu_tags(self) -> dict[str, str]:
        if not self._devices:
            return {}

        def each(values: list[Any]) -> str:
            return ",".join("unknown" if v is None else str(v) for v in values)

        return {
            "llem.gpu.indices": each([d.target.cuda_index for d in self._devices]),
            "llem.gpu.name": each([d.name for d in self._devices]),
            "llem.gpu.uuid": each([d.target.uuid for d in self._devices]),
            "llem.gpu.pci_bus_id": each([d.pci_bus_id for d in self._devices]),
            "llem.gpu.mapping": self._mapping,
            "llem.gpu.driver": self._driver,
            "llem.gpu.power_limit_w": each([None if d.power_limit_w is None else f"{d.power_limit_w:g}" for d in self._devices]),
            "llem.gpu.persistence_mode": each(
                [None if d.persistence_mode is None else ("on" if d.persistence_mode else "off") for d in self._devices]
            ),
            "llem.gpu.mig": each([d.mig for d in self._devices]),
        }

    def sampled_energy_j(self, phase: str) -> float | None:
        """Cross-check: sampled power integrated over a finished phase, all GPUs (None without samples)."""
        return self.record().sampled_energy_j(phase)

    def peak_memory_used_mb(self, phase: str) -> float | None:
        """NVML's used memory (whole boards, every process), highest sampled tick summed over the
        measured GPUs, over a finished phase; None without samples of it."""
        if self._sampler is None or phase not in self._windows_s:
            return None
        ticks: dict[float, float] = {}
        for s in samples_in(self._sampler.samples, *self._windows_s[phase]):
            if s.memory_used_mb is not None:
                ticks[s.monotonic_s] = ticks.get(s.monotonic_s, 0.0) + s.memory_used_mb
        return max(ticks.values()) if ticks else None

    def timeline(self) -> dict[str, list[tuple[int, float]]]:
        return metric_histories(self._sampler.samples) if self._sampler is not None else {}

    def record(self) -> EnergyRecord:
        """The raw data behind the energy artifacts (written by the reporter: tables and plots are its job)."""
        csv_path = self._codecarbon.csv_path if self._codecarbon is not None else None
        chosen = self._dynamic_baseline()
        return EnergyRecord(
            samples=list(self._sampler.samples) if self._sampler is not None else [],
            phases=dict(self._phases),
            baseline_w=dict(chosen.power_w) if chosen else {},
            codecarbon_csv=csv_path if csv_path is not None and csv_path.exists() else None,
            phases_summary=self._phases_summary(),
            windows_s=dict(self._windows_s),
        )

    def write_artifacts(self, directory: Path) -> list[Path]:
        """Timeline table, CodeCarbon CSV, per-phase energy JSON and plots/power_timeline.png."""
        from llem_mlflow.energy.artifacts import write_energy_artifacts

        return write_energy_artifacts(self.record(), directory)

    def _phases_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for kind, baseline in self._baselines.items():
            summary[kind] = {"power_w": baseline.power_w, "duration_s": baseline.duration_s, "method": baseline.method}
        for phase, r in self._readings.items():
            summary[phase] = {
                "start_ms": r.start_ms,
                "end_ms": r.end_ms,
                "duration_s": r.duration_s,
                "gpu_j": r.gpu.energy_j if r.gpu else None,
                "gpu_method": r.gpu.method if r.gpu else f"unavailable: {r.gpu_reason}",
                "cpu_j": r.sources["cpu"].joules if "cpu" in r.sources else None,
                "ram_j": r.sources["ram"].joules if "ram" in r.sources else None,
                "sources": {name: {"joules": s.joules, "meter": s.meter, "quality": s.quality} for name, s in r.sources.items()},
                "rapl_package_j": r.rapl.package_j if r.rapl else None,
                "rapl_dram_j": r.rapl.dram_j if r.rapl else None,
                "rapl_reason": r.rapl_reason,
                "codecarbon_cpu_j": r.host.cpu_j if r.host else None,
                "codecarbon_cpu_reason": r.host.cpu_reason if r.host else None,
                "codecarbon_ram_j": r.host.ram_j if r.host else None,
                "codecarbon_gpu_j": r.host.gpu_j if r.host else None,
                "codecarbon_emissions_kg": r.host.emissions_kg if r.host else None,
                "grid_kg_per_kwh": r.host.kg_per_kwh if r.host else None,
                "host_reason": r.host_reason,
                "total_j": r.total_j,
                "measured_j": r.measured_j,
                "cpu_load": asdict(r.cpu_load) if r.cpu_load else None,
                "warnings": r.warnings,
                "gpu_notes": r.gpu.notes if r.gpu else {},
                "gpu_sampled_j": r.gpu.sampled_j if r.gpu else None,
                "gpu_dynamic_j": r.gpu_dynamic_j,
            }
        return summary
