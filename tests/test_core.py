"""The measuring core without MLflow, and the reporter's own process (issue 10)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import LONG_RUN_PROMPTS, all_runs, only_run, write_config

from llem_mlflow import metrics_registry as registry

CORE_ONLY = """
import sys
from llem_mlflow.config.loader import load_config
from llem_mlflow.runner import Measurement
measurement = Measurement(load_config(sys.argv[1]), quiet=True)
report = measurement.run()
measurement.cleanup()
assert report.status == "complete", report.status
heavy = [m for m in ("mlflow", "matplotlib", "pandas", "pyarrow") if m in sys.modules]
import json
print(json.dumps([report.metrics["tokens/output_total"], len(report.records), sorted(report.durations_s), heavy]))
"""


def test_measure_runs_without_mlflow_and_reports_every_phase(tmp_path):
    cfg = write_config(tmp_path / "exp.yaml", n_trials=2)
    done = subprocess.run([sys.executable, "-c", CORE_ONLY, str(cfg)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tokens, records, phases, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert tokens == 4 * 8 and records == 2 * 4  # every trial's requests
    assert phases == ["environment", "first_generate", "load", "measure", "measure/2", "startup", "warmup"]
    assert heavy == []  # plots, tables and MLflow belong to the reporter


def test_disabled_warmup_is_no_phase(mlflow_store, tmp_path):
    from llem_mlflow.config.loader import load_config
    from llem_mlflow.runner import measure

    report = measure(load_config(str(write_config(tmp_path / "exp.yaml", warmup={"enabled": False}))), quiet=True)
    assert "warmup" not in report.durations_s and "time/warmup_s" not in report.metrics
    # no phase, no memory figures either (nor for the disabled baseline); the cold start is still its own phase
    assert not any(k.startswith(("memory/warmup_", "memory/baseline_")) for k in report.metrics)
    assert report.metrics["memory/first_generate_peak_rss_mb"] > 0 and report.metrics["time/first_generate_s"] > 0
    assert report.metrics["time/measure_s"] > 0 and report.metrics["time/startup_s"] > 0


def test_min_duration_repeats_whole_passes_over_the_prompts(tmp_path):
    from llem_mlflow.config.loader import load_config
    from llem_mlflow.runner import measure

    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": 2}, measure={"min_duration_s": 3.0})
    report = measure(load_config(str(cfg)), quiet=True)
    m, records = report.metrics, report.records
    passes = int(m["measure/passes"])
    assert m["time/measure_s"] >= 3.0 and passes >= 2 and m["measure/passes"] == passes
    assert m["tokens/output_total"] == passes * 2 * 8 and len(records) == passes * 2
    assert sorted(r.request_index for r in records) == list(range(passes * 2))  # one measured order, no repeats
    assert [r.prompt_index for r in records[2:4]] == [r.prompt_index for r in records[:2]]  # the same prompts again
    assert report.tags["llem.measure.min_duration"] == "3 s (measure.min_duration_s)"
    assert "llem.warning.short_window" not in report.tags  # 3 s is above the CPU meters' 1 s


def test_trial_drift_names_the_metrics_that_trend_or_spread():
    from llem_mlflow.runner import trial_drift

    trials = [
        {"energy/j_per_output_token": j, "throughput/output_tokens_per_s": 100.0, "latency/ttft_ms_p50": t}
        for j, t in ((1.00, 10.0), (1.01, 14.0), (1.02, 9.0), (1.03, 10.0))
    ]
    text = trial_drift(trials)
    assert "energy/j_per_output_token: rose in every trial" in text
    assert "latency/ttft_ms_p50: coefficient of variation" in text
    assert "throughput" not in text
    assert trial_drift(trials[:1]) is None


def test_a_measuring_process_that_dies_waiting_for_a_sync_answer_leaves_a_failed_run(mlflow_store):
    """The reporter's answer meets a closed pipe (the measuring process died inside drain()): the
    reporter still ends the run FAILED instead of crashing on the broken pipe."""
    from multiprocessing import Pipe

    from llem_mlflow.tracking.report_worker import DIED, serve

    worker_inbox, lead_outbox = Pipe(duplex=False)
    lead_inbox, worker_outbox = Pipe(duplex=False)
    lead_outbox.send(("open", {}))
    lead_outbox.send(("sync",))
    lead_outbox.close()
    lead_inbox.close()  # the lead is gone before the answer
    assert serve(worker_inbox, worker_outbox) is False
    run = only_run()
    assert run.info.status == "FAILED" and run.data.tags["llem.error"] == DIED


@pytest.mark.slow
def test_a_killed_measuring_process_leaves_a_failed_run_not_a_running_one(mlflow_store, tmp_path):
    """kill -9 of the measuring process: its MLflow reporter process sees the pipe close and ends the run."""
    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": LONG_RUN_PROMPTS}, pytorch={"batch_size": 1})
    process = subprocess.Popen([sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any("llem.device.type" in r.data.tags for r in all_runs()):
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.5)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and all_runs()[0].info.status == "RUNNING":
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.kill()
    run = all_runs()[0]
    assert run.info.status == "FAILED"
    assert "measuring process died" in run.data.tags["llem.error"]
    assert run.data.params["model"] == "random:tiny"  # what was logged before is kept


def test_registry_units_and_directions_follow_the_names():
    assert registry.unit("energy/gpu3_j") == "J"
    assert registry.unit("energy/j_per_request") == "J/request"
    assert registry.unit("energy/dynamic_j_per_output_token") == "J/token"
    assert registry.unit("latency/itl_ms_p99") == "ms"
    assert registry.unit("throughput/input_tokens_per_s") == "tokens/s"
    assert registry.unit("memory/gpu_peak_allocated_mb") == "MiB"
    assert registry.unit("latency/ttft_ms_cv") == "" and registry.unit("energy/j_per_output_token_cv") == ""  # a ratio
    assert registry.unit("latency/ttft_ms_std") == "ms" and registry.unit("energy/j_per_decode_token") == "J/token"
    assert registry.direction("throughput/output_tokens_per_s") == "max"
    assert registry.direction("latency/e2e_ms_p90") == "min"
    assert registry.direction("model/params") is None
    assert registry.display_order({"time/load_s", "latency/ttft_ms_p50", "energy/j_per_output_token", "a/b"}) == [
        "energy/j_per_output_token", "latency/ttft_ms_p50", "a/b", "time/load_s"]  # fmt: skip
    assert set(registry.TRIAL_SPREAD) <= set(registry.KEY) and set(registry.HEADLINE) <= set(registry.KEY)


@pytest.mark.parametrize(
    "value, text", [(11350.3, "11350"), (13.449, "13.45"), (0.0312749, "0.03127"), (403.0, "403.0"), (0.0, "0"), (-2.5, "-2.500")]
)
def test_numbers_are_plain_decimals(value, text):
    assert registry.format_number(value) == text
    assert "e" not in registry.format_number(value * 1e-9)


def test_energy_figures_say_what_they_rest_on():
    tags = {
        "llem.energy.total_quality": "mixed: gpu measured, cpu+ram estimated",
        "llem.energy.total_sources": "gpu+cpu+ram",
        "llem.energy.gpu_quality": "measured",
        "llem.energy.cpu_quality": "estimated",
        "llem.energy.ram_quality": "estimated",
    }
    assert registry.describe("energy/j_per_output_token", 0.0312749, tags) == (
        "0.03127 J/token energy per output token (GPU measured, CPU+RAM estimated)"
    )
    assert registry.energy_note("energy/measured_j_per_output_token", tags) == "GPU measured"
    assert registry.energy_note("energy/cpu_j", tags) == "CPU estimated"
    assert registry.energy_note("throughput/output_tokens_per_s", tags) is None
    assert registry.describe("energy/j_per_output_token", 0.5, {}) == "0.5000 J/token energy per output token"
    estimated = {"llem.energy.total_quality": "estimated", "llem.energy.total_sources": "cpu+ram"}
    assert registry.total_energy_note(estimated) == "CPU+RAM estimated"
    assert registry.unit("emissions/grid_intensity_g_per_kwh") == "g/kWh"
