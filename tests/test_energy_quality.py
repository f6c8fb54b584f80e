"""What was measured and what was modelled, through the real CLI path (`launch`) into a real sqlite store.

Only the hardware is fake where this machine lacks it: a fake NVML (tests/fake_nvml.py) for a GPU,
a fake powercap tree (tests/fake_rapl.py) for RAPL counters. CodeCarbon is real.
"""

from __future__ import annotations

import csv
import io
import re

import pytest
from fake_nvml import NVML_ERROR_GPU_IS_LOST, FakeGpu, FakeNvml
from fake_rapl import FakeRapl
from helpers import artifact_text, before_batch, only_run, write_config
from mlflow import MlflowClient

from llem_mlflow.launch import launch


@pytest.fixture
def fake_gpu(monkeypatch):
    """A GPU this machine lacks, behind pynvml's interface (as in test_reliability_faults.py): (board, hardware)."""
    from fakegpu import FakeHardware

    gpu = FakeGpu(power_w=60.0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return gpu, FakeHardware(FakeNvml([gpu]))  # the model's weights are on its cuda:0


@pytest.fixture
def no_rapl(monkeypatch, tmp_path):
    """This machine's own RAPL (where readable) kept out, so the sources are the ones each test sets."""
    from llem_mlflow.energy import rapl

    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "no-powercap")


def test_a_cpu_run_says_its_energy_is_estimated(mlflow_store, tmp_path, capsys, no_rapl):
    cfg = write_config(tmp_path / "exp.yaml", energy={"codecarbon": True}, measure={"min_duration_s": None})
    assert launch(str(cfg), quiet=False) == 0
    out = capsys.readouterr().out
    run = only_run()
    m, tags = run.data.metrics, run.data.tags
    assert tags["llem.energy.cpu_quality"] == "estimated" and tags["llem.energy.ram_quality"] == "estimated"
    assert tags["llem.energy.total_quality"] == "estimated" and tags["llem.energy.total_sources"] == "cpu+ram"
    assert "estimate" in tags["llem.energy.cpu_method"] and "RAPL unavailable" in tags["llem.energy.cpu_method"]
    assert tags["llem.energy.rapl"].startswith("unavailable: ") and "is absent" in tags["llem.energy.rapl"]
    assert "energy/measured_j" not in m and "energy/measured_j_per_output_token" not in m  # nothing measured
    assert "energy/gpu_j_per_output_token" not in m
    assert "J/token energy per output token (CPU+RAM estimated)" in out
    # the measured window lasted the CPU default (1 s), in whole passes over the 4 prompts
    assert tags["llem.measure.min_duration"].startswith("1 s (default: no GPU energy")
    assert m["time/measure_s"] >= 1.0 and "llem.warning.short_window" not in tags
    assert m["tokens/output_total"] == m["measure/passes"] * 4 * 8
    # CodeCarbon billed this process (the default scope); emissions are the reported energy x its intensity
    assert tags["llem.energy.codecarbon_scope"] == "process"
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "codecarbon_emissions.csv"))))
    measure_row = next(r for r in rows if r["project_name"] == "llem/measure")
    assert measure_row["tracking_mode"] == "process"
    intensity_kg_per_kwh = float(measure_row["emissions"]) / float(measure_row["energy_consumed"])
    assert m["emissions/grid_intensity_g_per_kwh"] == pytest.approx(intensity_kg_per_kwh * 1000, rel=1e-6)
    assert m["emissions/kg_co2eq"] == pytest.approx(m["energy/total_j"] / 3.6e6 * intensity_kg_per_kwh, rel=1e-9)


def test_machine_scope_is_passed_to_codecarbon(mlflow_store, tmp_path, no_rapl):
    cfg = write_config(tmp_path / "exp.yaml", energy={"codecarbon": True, "codecarbon_scope": "machine"})
    assert launch(str(cfg), quiet=True) == 0
    run = only_run()
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "codecarbon_emissions.csv"))))
    assert {r["tracking_mode"] for r in rows} == {"machine"}
    assert run.data.tags["llem.energy.codecarbon_scope"] == "machine"
    assert "installed memory" in run.data.tags["llem.energy.ram_method"]


def test_gpu_measured_and_host_estimated_is_mixed(mlflow_store, tmp_path, capsys, fake_gpu, no_rapl):
    cfg = write_config(tmp_path / "exp.yaml", energy={"codecarbon": True, "sample_interval_ms": 50})
    assert launch(str(cfg), quiet=False, hardware=fake_gpu[1]) == 0
    out = capsys.readouterr().out
    m, tags = only_run().data.metrics, only_run().data.tags
    assert tags["llem.energy.gpu_quality"] == "measured"
    assert tags["llem.energy.total_quality"] == "mixed: gpu measured, cpu+ram estimated"
    assert m["energy/measured_j"] == m["energy/gpu_j"] < m["energy/total_j"]
    assert m["energy/measured_j_per_output_token"] == pytest.approx(m["energy/gpu_j"] / m["tokens/output_total"])
    assert m["energy/gpu_j_per_output_token"] == m["energy/measured_j_per_output_token"]
    assert "(GPU measured, CPU+RAM estimated)" in out
    # measure.min_duration_s is 0 here (one pass), below the NVML meter's 5 s: the short-window warning says so
    assert "< 5 s (NVML GPU energy" in tags["llem.warning.short_window"]


def test_readable_rapl_replaces_codecarbons_cpu_and_ram(mlflow_store, tmp_path, capsys, monkeypatch):
    from llem_mlflow.energy import rapl as rapl_module

    rapl = FakeRapl(tmp_path / "powercap")
    monkeypatch.setattr(rapl_module, "POWERCAP_ROOT", tmp_path / "powercap")
    before_batch(monkeypatch, 2 + 1, lambda: rapl.add_everywhere(3.0))  # 3 J per domain, in the measured window
    cfg = write_config(tmp_path / "exp.yaml", energy={"codecarbon": True})
    assert launch(str(cfg), quiet=False) == 0
    out = capsys.readouterr().out
    run = only_run()
    m, tags = run.data.metrics, run.data.tags
    assert m["energy/cpu_j"] == pytest.approx(3.0) and m["energy/ram_j"] == pytest.approx(3.0)
    assert m["energy/total_j"] == m["energy/measured_j"] == pytest.approx(6.0)
    assert tags["llem.energy.cpu_method"] == "rapl (package-0)" and tags["llem.energy.total_quality"] == "measured"
    assert "J/token energy per output token (CPU+RAM measured)" in out
    assert m["emissions/kg_co2eq"] == pytest.approx(6.0 / 3.6e6 * m["emissions/grid_intensity_g_per_kwh"] / 1000)


def test_trials_with_different_sources_are_not_averaged(mlflow_store, tmp_path, capsys, monkeypatch, fake_gpu, no_rapl):
    """Issue 11, item 1: NVML fails in trial 2 (the GPU is lost); trial 1 had gpu+cpu+ram, trial 2 cpu+ram."""

    gpu, hardware = fake_gpu

    def gpu_lost() -> None:
        for name in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetFieldValues"):
            gpu.fail[name] = NVML_ERROR_GPU_IS_LOST

    before_batch(monkeypatch, 2 + 2 + 1, gpu_lost)  # first generate() + warmup, trial 1's 2 batches, trial 2's first
    cfg = write_config(tmp_path / "exp.yaml", n_trials=2, energy={"codecarbon": True, "sample_interval_ms": 50})
    assert launch(str(cfg), quiet=False, hardware=hardware) == 0
    out = capsys.readouterr().out
    run = only_run()
    m, tags = run.data.metrics, run.data.tags
    # each trial's own figure is kept in its history ...
    history = MlflowClient().get_metric_history(run.info.run_id, "trial/energy/j_per_output_token")
    assert sorted(p.step for p in history) == [1, 2]
    # ... but no total or per-token figure mixes them, nor an interval
    for name in ("energy/total_j", "energy/j_per_output_token", "energy/j_per_output_token_ci95_low",
                 "energy/j_per_request", "energy/measured_j", "emissions/kg_co2eq", "energy/gpu_j"):  # fmt: skip
        assert name not in m, name
    assert m["energy/cpu_j"] > 0 and m["energy/ram_j"] > 0  # the same meter in both trials: averaged
    assert re.search(r"trial 2 \(measure/2\) lost gpu \(.+\)$", tags["llem.warning.mixed_sources"])  # with NVML's reason
    assert tags["llem.energy.gpu_method"].startswith("nvml_counter; measure/2: unavailable: ")
    assert tags["llem.energy.total_sources"] == "measure: gpu+cpu+ram; measure/2: cpu+ram"
    assert tags["llem.energy.gpu_quality"] == "varies by trial: measure measured, measure/2 absent"
    assert "energy per output token" not in out and "warning: mixed_sources:" in out
