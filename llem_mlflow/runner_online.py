"""scenario: online: the core's phases, with requests arriving over time (no MLflow).

The same phases as offline (runner.py); what runs inside them differs:
  first_generate  starts one continuous-batching manager (its KV cache, CUDA graphs where used)
                  and sends it one request (cold start);
  warmup          sends `warmup.n_batches` requests at once;
  measure         sends the trial's requests on the arrival schedule (bench/online.py), then
                  finds the steady window (bench/steady.py) and measures load and energy in it.
The manager lives from first_generate to the end of the run (every trial uses it)
and is stopped when the run ends, also after a failure.

What goes into the Report beyond the offline figures: latency/queue_ms_*;
load/*, energy/steady_*, the occupancy timeline (metric histories beside the
power timeline), online/schedule.json, and tags saying how the steady window was
found and what in it could not be measured.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from llem_mlflow.progress import progress
from llem_mlflow.redact import redact
from llem_mlflow.report import Report
from llem_mlflow.runner import Measurement, throughput_metrics, trial_phase

if TYPE_CHECKING:
    from llem_mlflow.bench.loading import LoadedModel
    from llem_mlflow.bench.online import OnlineDriver, OnlineRequest, OnlineTrace
    from llem_mlflow.bench.steady import SteadyWindow


class OnlineMeasurement(Measurement):
    driver: OnlineDriver | None = None

    def run(self) -> Report:
        self._trial_tags: dict[str, list[str]] = {}
        try:
            return super().run()
        finally:
            if self.driver is not None:  # a failure fails what is pending instead of finishing it
                self.driver.close(hard=self.report.status != "complete")

    def prepare(self, loaded: LoadedModel) -> tuple[OnlineDriver, list[OnlineRequest]]:
        from llem_mlflow.bench.loading import json_safe
        from llem_mlflow.bench.online import OnlineDriver
        from llem_mlflow.bench.prompts import load_prompts

        self.driver = OnlineDriver(loaded, self.cfg)
        self.report.resolved.update(
            {
                "from_pretrained": redact(loaded.resolved),
                "generation_config": json_safe(self.driver.generation_config.to_dict()),
            }
        )
        self.report.prompts = load_prompts(self.cfg, loaded.tokenizer)  # the run's dataset
        return self.driver, self.driver.requests(self.report.prompts)

    def run_first_generate(self, driver: OnlineDriver, request: OnlineRequest) -> None:
        """Cold start: the manager's start (cache, graphs) and its first request, a phase of its own."""
        self.listener.before_window()
        with self.phase("first_generate"):
            driver.start()
            ttft = driver.warmup([request], 1)[0]
        self.report.resolved["continuous_batching"] = driver.resolved
        if ttft is not None:
            self.report.metrics["latency/first_ttft_ms"] = ttft

    def run_warmup(self, driver: OnlineDriver, requests: list[OnlineRequest]) -> None:
        driver.warmup(requests, self.cfg.warmup.n_batches)

    def run_trial(self, trial: int, driver: OnlineDriver, requests: list[OnlineRequest]) -> None:
        from llem_mlflow.bench.stats import latency_metrics, summarize

        phase = trial_phase("measure", trial)
        mark = self.monitor.gpu_counter_j if self.monitor.gpu_counter_j() is not None else None
        online = self.cfg.online
        self.listener.before_window()
        with self.phase(phase, trial=True) as window:
            with progress(online.n_requests or 0, f"measure {trial}/{self.cfg.n_trials}", self.quiet) as advance:
                trace = driver.run(requests, mark=mark, advance=advance)
        records = trace.records
        for record in records:
            record.trial = trial
        self.report.records.extend(records)
        duration = self.report.durations_s[phase]
        metrics = latency_metrics(records)
        metrics.update(summarize("latency/queue_ms", [r.queue_ms for r in records if r.queue_ms is not None]))
        metrics.update(throughput_metrics(metrics, len(records), duration))
        metrics["time/measure_s"] = duration
        metrics.update(window.memory)
        metrics["load/requests_reset"] = float(sum(r.reset for r in records))
        if trace.schedule_s is not None:
            metrics["load/arrival_lag_ms_max"] = max((r.arrival_s - r.scheduled_s) * 1000.0 for r in records)
        if window.energy is not None:
            metrics.update(self.monitor.metrics(window.energy, int(metrics.get("tokens/output_total", 0)), len(records)))
            metrics.pop("energy/j_per_request", None)  # online: per request of the steady window (below)
        metrics.update(self.steady_state(phase, trace))
        self.report.trial_metrics.append(metrics)
        if trial == 1:
            self.log_trace(trace)

    def steady_state(self, phase: str, trace: OnlineTrace) -> dict[str, float]:
        """Load, goodput and energy over the steady window of one trial."""
        from llem_mlflow.bench.steady import steady_window, window_load

        window = steady_window(trace.records)
        if isinstance(window, str):
            self._trial_tag(phase, "llem.online.steady_window", f"unavailable: {window}")
            return {}
        metrics, tags = window_load(trace.records, window, self.cfg.online.slo)
        for key, text in tags.items():
            self._trial_tag(phase, key, text)
        start_ms = trace.start_epoch_ms + window.start_s * 1000.0
        self._trial_tag(
            phase,
            "llem.online.steady_window",
            f"{window.start_s:.3f} s to {window.end_s:.3f} s after the first arrival (epoch ms {start_ms:.0f} to "
            f"{start_ms + window.duration_s * 1000.0:.0f}): from the first arrival once {window.plateau} request(s) "
            f"were in flight (the plateau) to the last arrival",
        )
        metrics.update(self.steady_energy(phase, trace, window, metrics))
        return metrics

    def steady_energy(self, phase: str, trace: OnlineTrace, window: SteadyWindow, load: dict[str, float]) -> dict[str, float]:
        """energy/steady_j and what divides by it; absent, with the reason, where no meter covers a sub-window."""
        host = "CPU and RAM energy (CodeCarbon) exist only for the whole measure phase (energy/total_j)"
        if not self.cfg.energy.codecarbon:
            host = "CodeCarbon is off"
        energy, method = self.monitor.gpu_energy_between(
            trace.start_monotonic_s + window.start_s,
            trace.start_monotonic_s + window.end_s,
            trace.marks[window.first],
            trace.marks[window.last],
        )
        if energy is None:
            self._trial_tag(phase, "llem.online.steady_energy", f"GPU {method}; {host}")
            return {}
        self._trial_tag(phase, "llem.online.steady_energy", f"gpu ({method}) only; {host}")
        steady_j = sum(energy.values())
        metrics = {"energy/steady_j": steady_j, "power/steady_gpu_mean_w": steady_j / window.duration_s}
        tokens = load.get("tokens/steady_output_total")
        if tokens:
            metrics["energy/steady_j_per_output_token"] = steady_j / tokens
        completed = round(load["load/completed_requests_per_s"] * window.duration_s)
        if completed > 0:
            metrics["energy/j_per_request"] = steady_j / completed
        return metrics

    def log_trace(self, trace: OnlineTrace) -> None:
        """Trial 1's occupancy timeline and arrival schedule, for the reporter."""
        from llem_mlflow.bench.steady import occupancy_histories

        online = self.cfg.online
        self.report.histories.update(occupancy_histories(trace.records, trace.start_epoch_ms))
        window = [r.arrival_s for r in trace.records if r.in_steady_window]
        self.report.texts["online/schedule.json"] = json.dumps(
            {
                "mode": "open loop" if online.request_rate is not None else "closed loop",
                "request_rate": online.request_rate,
                "max_concurrency": online.max_concurrency,
                "arrival": (online.arrival or "poisson") if online.request_rate is not None else None,
                "burstiness": online.burstiness,
                "seed": self.driver.seed,
                "start_epoch_ms": trace.start_epoch_ms,
                "scheduled_s": trace.schedule_s,
                "arrival_s": [r.arrival_s for r in trace.records],
                "prompt_index": [r.prompt_index for r in trace.records],
                "steady_window_s": [window[0], trace.records[-1].arrival_s] if window else None,
            },
            indent=1,
        )
        if window:
            self.report.resolved["steady_window_epoch_ms"] = [
                trace.start_epoch_ms + window[0] * 1000.0,
                trace.start_epoch_ms + trace.records[-1].arrival_s * 1000.0,
            ]

    def summary_tags(self) -> dict[str, str]:
        tags = super().summary_tags()
        tags.pop("llem.latency.streaming", None)  # offline's beam-search note; online, a reset says why (below)
        several = self.cfg.n_trials > 1
        for key, texts in self._trial_tags.items():
            tags[key] = " | ".join(texts if several else texts[-1:])[:5000]
        resets = sum(r.reset for r in self.report.records)
        if resets:
            tags["llem.online.resets"] = (
                f"{resets} request(s) were reset: the manager dropped their KV cache to make room and "
                "prefilled them again, which loses their first admission (queue wait absent) and the times of "
                "their tokens before the reset (TTFT and ITL absent when tokens lack a time); the occupancy "
                "timeline counts them as waiting until they were admitted again. More KV cache "
                "(online.kv_cache_blocks) avoids resets"
            )
        return tags

    def _trial_tag(self, phase: str, key: str, text: str) -> None:
        self._trial_tags.setdefault(key, []).append(f"{phase}: {text}" if self.cfg.n_trials > 1 else text)

