"""Faults mid-run (docs/reliability.md, "Faults" rows): what finished is kept, the run ends
with a truthful status, and a meter that fails never stops the benchmark.
"""

from __future__ import annotations

import csv
import io
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_nvml import NVML_ERROR_GPU_IS_LOST, FakeGpu, FakeNvml
from helpers import (
    LONG_RUN_PROMPTS,
    artifact_json,
    artifact_paths,
    artifact_text,
    assert_failed_with,
    before_batch,
    only_run,
    wait_for_measuring,
    write_config,
)

from llem_mlflow.launch import EXIT_FAULT, EXIT_INTERRUPTED, EXIT_OK, launch

pytestmark = pytest.mark.slow


def test_out_of_memory_keeps_finished_batches_and_hints_at_batch_size(mlflow_store, tmp_path, capsys, monkeypatch):
    # 3 batches of 2 prompts; torch's OutOfMemoryError is raised before measured batch 3 (after the first
    # generate() and 1 warmup batch).
    import torch

    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("injected for a test before measured batch 3")

    before_batch(monkeypatch, 2 + 3, out_of_memory)
    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": 6}, energy={"codecarbon": True})
    code = launch(str(cfg), quiet=True)
    err = capsys.readouterr().err
    assert code == EXIT_FAULT
    assert "out of memory" in err and "pytorch.batch_size" in err
    run = only_run()
    assert_failed_with(run, "out of memory", "lower pytorch.batch_size")
    assert run.data.tags["llem.failed_phase"] == "measure"

    results = artifact_json(run.info.run_id, "results.json")
    assert results["status"] == "partial" and "out of memory" in results["error"]
    assert results["requests_completed"] == 4  # the two batches that finished
    m = run.data.metrics
    assert m["tokens/output_total"] == 4 * 8  # 4 finished requests x min_new_tokens
    assert m["latency/e2e_ms_p50"] > 0 and m["time/load_s"] > 0 and m["time/warmup_s"] > 0
    assert "time/measure_s" not in m  # the measure phase never ended: no made-up duration
    assert "requests.csv" in artifact_paths(run.info.run_id)
    # the energy window the fault cut short was closed at the fault and kept, and says so
    assert m["energy/cpu_j"] > 0 and m["energy/j_per_output_token"] > 0
    assert "finished before the failure" in run.data.tags["llem.partial"]


def test_a_failure_in_trial_2_keeps_its_finished_batches(mlflow_store, tmp_path, monkeypatch):
    """Issue 11 item 9: trial 1 finished, trial 2 fails before its second batch. The figures are trial 1's;
    trial 2's finished requests are in requests.csv with their trial number."""

    def fault() -> None:
        raise RuntimeError("injected before trial 2's second batch")

    before_batch(monkeypatch, 2 + 2 + 2, fault)  # first generate() + warmup, trial 1's 2 batches, trial 2's 2nd
    cfg = write_config(tmp_path / "exp.yaml", n_trials=2)
    assert launch(str(cfg), quiet=True) == EXIT_FAULT
    run = only_run()
    assert_failed_with(run, "injected before trial 2")
    assert run.data.tags["llem.failed_phase"] == "measure/2"
    assert run.data.tags["llem.partial"] == "metrics cover the 1 finished trial(s); trial 2 stopped after 2 request(s), kept in requests.csv"
    results = artifact_json(run.info.run_id, "results.json")
    assert (results["requests_completed"], results["trials_completed"]) == (4 + 2, 1)
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "requests.csv"))))
    assert [(int(r["trial"]), int(r["request_index"])) for r in rows] == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]
    m = run.data.metrics
    assert m["tokens/output_total"] == 4 * 8 and m["time/measure_s"] == results["trials"][0]["time/measure_s"]


def test_sigterm_marks_the_run_killed_and_keeps_partial_data(mlflow_store, tmp_path):
    # Long enough to be interrupted mid-measure: LONG_RUN_PROMPTS prompts, one per batch; CodeCarbon on so that
    # the energy of the phases that finished (load, warmup) is there to keep. Ten warmup batches: one
    # is too short for CodeCarbon's process CPU estimate to resolve (then it has no figure, not a 0).
    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": LONG_RUN_PROMPTS}, pytorch={"batch_size": 1},
                       energy={"codecarbon": True}, warmup={"n_batches": 10})  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        wait_for_measuring(process)
        time.sleep(3)  # some batches finish
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert "Traceback" not in err
    assert "KILLED" in err
    run = only_run()
    assert_failed_with(run, "interrupted", status="KILLED")
    results = artifact_json(run.info.run_id, "results.json")
    assert results["status"] == "partial" and results["phase"] == "measure"
    finished = results["requests_completed"]
    assert 0 < finished < LONG_RUN_PROMPTS
    assert run.data.metrics["tokens/output_total"] == finished * 8
    assert run.data.metrics["time/warmup_s"] > 0
    # The energy so far: CodeCarbon's CPU energy of the phases that finished.
    phases = artifact_json(run.info.run_id, "energy_phases.json")
    assert phases["load"]["cpu_j"] > 0 and phases["warmup"]["cpu_j"] > 0
    assert "codecarbon_emissions.csv" in artifact_paths(run.info.run_id)


def test_meters_failing_mid_run_leave_the_run_going_with_the_reason(mlflow_store, tmp_path, capsys, monkeypatch):
    """NVML (the GPU is lost) and CodeCarbon (stop() raises) both fail from the first measured batch.

    Only the hardware is fake: a fake NVML behind pynvml's interface stands for the GPU this
    machine lacks; CodeCarbon is real until it is made to fail.
    """
    import codecarbon

    from fakegpu import FakeHardware

    gpu = FakeGpu()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hardware = FakeHardware(FakeNvml([gpu]))  # the model's weights are on its cuda:0

    def failing_stop(self, *args, **kwargs):
        raise RuntimeError("cannot read the RAPL counters")

    def meters_break() -> None:
        for name in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetFieldValues",
                     "nvmlDeviceGetTemperature", "nvmlDeviceGetComputeRunningProcesses"):  # fmt: skip
            gpu.fail[name] = NVML_ERROR_GPU_IS_LOST
        monkeypatch.setattr(codecarbon.OfflineEmissionsTracker, "stop", failing_stop)

    before_batch(monkeypatch, 2 + 1, meters_break)  # from the first measured batch on
    cfg = write_config(tmp_path / "exp.yaml", energy={"codecarbon": True, "sample_interval_ms": 50})
    code = launch(str(cfg), quiet=True, hardware=hardware)
    assert code == EXIT_OK, capsys.readouterr().err[-3000:]
    run = only_run()
    assert run.info.status == "FINISHED"
    m, tags = run.data.metrics, run.data.tags
    # The benchmark itself is complete ...
    assert m["tokens/output_total"] == 4 * 8 and m["latency/e2e_ms_p50"] > 0
    # ... the energy of the measured window is absent, never 0, and the tags say why.
    for name in ("energy/gpu_j", "energy/cpu_j", "energy/ram_j", "energy/total_j", "energy/j_per_output_token"):
        assert name not in m, name
    assert tags["llem.energy.gpu_method"].startswith("unavailable:"), tags["llem.energy.gpu_method"]
    assert tags["llem.energy.cpu_method"].startswith("unavailable:")
    assert "RAPL" in tags["llem.energy.cpu_method"]
    # What was measured before the meters failed is kept.
    assert m["energy/load_j"] > 0 and m["energy/warmup_j"] > 0


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "1m"):
    """A real, tiny filesystem (tmpfs) at `path`: writes fail with ENOSPC once it is full."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"filling a real disk needs permission to mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> None:
    """Write a filler file until the disk is full."""
    with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def test_disk_full_ends_failed_naming_the_file_and_never_leaves_a_complete_results_json(mlflow_store, tmp_path, capsys):
    """The artifact store's disk fills up while the run measures (the tracking store, elsewhere, has room)."""
    from mlflow import MlflowClient

    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": 40}, pytorch={"batch_size": 1})
    with tiny_disk(tmp_path / "artifacts") as disk:
        experiment = MlflowClient().create_experiment("full", artifact_location=disk.as_uri())
        filler = threading.Thread(target=_fill_when_measuring, args=(experiment, disk), daemon=True)
        filler.start()
        code = launch(str(cfg), experiment_name="full", quiet=True)
        filler.join(timeout=60)
        err = capsys.readouterr().err
        run = only_run("full")
        paths = artifact_paths(run.info.run_id)
    assert code == EXIT_FAULT
    assert run.info.status == "FAILED"
    error = run.data.tags["llem.error"]
    for needle in ("No space left on device", "cannot store artifact '", run.info.artifact_uri, "Fix: free space"):
        assert needle in error and needle in err, (needle, error)
    # No results.json claims the run complete (the partial one could not be stored either).
    assert "results.json" not in paths


def _fill_when_measuring(experiment_id: str, disk: Path) -> None:
    from mlflow import MlflowClient

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        runs = MlflowClient().search_runs([experiment_id])
        if runs and "llem.device.type" in runs[0].data.tags:  # the model is loaded: measuring now
            fill(disk)
            return
        time.sleep(0.1)


def test_a_full_temp_folder_still_keeps_error_txt_and_partial_results(mlflow_store, tmp_path, capsys, monkeypatch):
    """The temp folder (the run's workdir, MLflow's upload staging) is on a full disk; the artifact store
    is not: the run ends FAILED naming the file, and error.txt and the partial results.json are kept."""
    import tempfile

    cfg = write_config(tmp_path / "exp.yaml")
    with tiny_disk(tmp_path / "tmp") as disk:
        fill(disk)
        monkeypatch.setenv("TMPDIR", str(disk))  # the reporter's process
        monkeypatch.setattr(tempfile, "tempdir", str(disk))  # this one
        code = launch(str(cfg), quiet=True)
        err = capsys.readouterr().err
    assert code == EXIT_FAULT, err[-3000:]
    run = only_run()
    assert_failed_with(run, "No space left on device", f"cannot write {disk}")  # the tag, and error.txt kept
    results = artifact_json(run.info.run_id, "results.json")
    assert results["status"] == "partial" and "No space left on device" in results["error"]
