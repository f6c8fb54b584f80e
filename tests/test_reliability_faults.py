"""Faults mid-run (docs/reliability.md, "Faults" rows): what finished is kept, the run ends
with a truthful status, and a meter that fails never stops the benchmark.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from fake_nvml import NVML_ERROR_GPU_IS_LOST, FakeGpu, FakeNvml
from helpers import (
    all_runs,
    artifact_json,
    artifact_paths,
    assert_failed_with,
    before_batch,
    only_run,
    wait_for_measuring,
    write_config,
)

from llem_mlflow.launch import EXIT_FAULT, EXIT_INTERRUPTED, EXIT_OK, launch

pytestmark = pytest.mark.slow


def test_out_of_memory_keeps_finished_batches_and_hints_at_batch_size(mlflow_store, tmp_path, capsys, monkeypatch):
    # 3 batches of 2 prompts; torch's OutOfMemoryError is raised before measured batch 3 (after 1 warmup batch).
    import torch

    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("injected for a test before measured batch 3")

    before_batch(monkeypatch, 1 + 3, out_of_memory)
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


def test_sigterm_marks_the_run_killed_and_keeps_partial_data(mlflow_store, tmp_path):
    # Long enough to be interrupted mid-measure: 400 prompts, one per batch; CodeCarbon on so that
    # the energy of the phases that finished (load, warmup) is there to keep.
    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": 400}, pytorch={"batch_size": 1}, energy={"codecarbon": True})
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
    assert 0 < finished < 400
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

    from llem_mlflow.energy import monitor as monitor_module

    gpu = FakeGpu()
    real_open_nvml = monitor_module.open_nvml
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(monitor_module, "open_nvml", lambda lib=None: real_open_nvml(FakeNvml([gpu])))

    def failing_stop(self, *args, **kwargs):
        raise RuntimeError("cannot read the RAPL counters")

    def meters_break() -> None:
        for name in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetFieldValues",
                     "nvmlDeviceGetTemperature", "nvmlDeviceGetComputeRunningProcesses"):  # fmt: skip
            gpu.fail[name] = NVML_ERROR_GPU_IS_LOST
        monkeypatch.setattr(codecarbon.OfflineEmissionsTracker, "stop", failing_stop)

    before_batch(monkeypatch, 1 + 1, meters_break)  # from the first measured batch on
    cfg = write_config(tmp_path / "exp.yaml", energy={"codecarbon": True, "sample_interval_ms": 50})
    code = launch(str(cfg), quiet=True)
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


def _disk_full_from(first_failing: str, monkeypatch, spare: tuple[str, ...] = ()) -> list[str]:
    """The artifact store's disk fills up when `first_failing` is written: from then on every artifact
    write fails with ENOSPC (except the names in `spare`, for a disk that has room for a small file again)."""
    import errno

    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    real = LocalArtifactRepository.log_artifact
    written: list[str] = []
    full = []

    def log_artifact(self, local_file, artifact_path=None):
        name = os.path.basename(local_file)
        if name == first_failing:
            full.append(True)
        if full and name not in spare:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(name)
        return real(self, local_file, artifact_path)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", log_artifact)
    return written


def test_disk_full_ends_failed_naming_the_file_and_never_leaves_a_complete_results_json(mlflow_store, tmp_path, capsys, monkeypatch):
    _disk_full_from("requests.csv", monkeypatch)  # the disk fills up while the results are stored
    cfg = write_config(tmp_path / "exp.yaml")
    assert launch(str(cfg), quiet=True) == EXIT_FAULT
    err = capsys.readouterr().err
    run = only_run()
    assert run.info.status == "FAILED"
    error = run.data.tags["llem.error"]
    for needle in ("No space left on device", "cannot store artifact 'requests.csv'", run.info.artifact_uri, "Fix: free space"):
        assert needle in error and needle in err, (needle, error)
    # Nothing after the fault could be stored, and no results.json claims a complete run.
    assert "results.json" not in artifact_paths(run.info.run_id)


def test_disk_full_keeps_error_txt_and_partial_results_where_there_is_room(mlflow_store, tmp_path, capsys, monkeypatch):
    _disk_full_from("requests.csv", monkeypatch, spare=("results.json", "error.txt"))  # small files still fit
    cfg = write_config(tmp_path / "exp.yaml")
    assert launch(str(cfg), quiet=True) == EXIT_FAULT
    run = only_run()
    assert_failed_with(run, "No space left on device", "requests.csv")  # tag and error.txt
    results = artifact_json(run.info.run_id, "results.json")
    assert results["status"] == "partial" and "No space left on device" in results["error"]
