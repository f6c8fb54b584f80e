"""EnergyMonitor over a fake NVML (real CodeCarbon where it is on): phases, baseline, metrics, tags, warnings."""

import os
import time

import pytest
from fake_nvml import (
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeGpu,
    FakeNvml,
    two_gpus,
)

from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.energy.monitor import EnergyMonitor
from llem_mlflow.errors import EnergyError


def config(gpu="auto", codecarbon=False, baseline=False, baseline_s=0.3, device_map="auto", interval_ms=20, country="USA", rapl=False):
    energy = {"gpu": gpu, "codecarbon": codecarbon, "sample_interval_ms": interval_ms, "country_iso_code": country, "rapl": rapl}
    return ExperimentConfig(
        model="random:tiny",
        pytorch={"device_map": device_map},
        baseline={"enabled": baseline, "duration_s": baseline_s},
        energy=energy,
    )


@pytest.fixture(autouse=True)
def all_gpus_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def monitors():
    opened = []
    yield opened
    for monitor in opened:
        monitor.close()


def start(monitors, cfg, nvml):
    monitor = EnergyMonitor(cfg, nvml=nvml)
    monitors.append(monitor)
    return monitor


def run_phase(monitor, phase, seconds, before_end=None):
    monitor.begin(phase)
    time.sleep(seconds)
    if before_end:
        before_end()
    return monitor.end(phase)


def test_metrics_sum_gpus_and_subtract_the_idle_baseline(monitors):
    gpus = two_gpus()
    for gpu in gpus:
        gpu.set_power(50.0)  # idle
    monitor = start(monitors, config(baseline=True), FakeNvml(gpus))
    assert monitor.measure_baseline() is True
    gpus[0].set_power(150.0)
    gpus[1].set_power(250.0)
    measured = run_phase(monitor, "measure", 0.4)
    m = monitor.metrics(measured, output_tokens=100, requests=4)
    d = measured.duration_s
    assert m["power/gpu_baseline_w"] == pytest.approx(100.0, rel=0.03)
    assert m["energy/gpu0_j"] == pytest.approx(150 * d, rel=0.02)
    assert m["energy/gpu1_j"] == pytest.approx(250 * d, rel=0.02)
    assert m["energy/gpu_j"] == pytest.approx(m["energy/gpu0_j"] + m["energy/gpu1_j"])
    assert m["energy/gpu_dynamic_j"] == pytest.approx((400 - 100) * d, rel=0.03)
    assert m["energy/total_j"] == m["energy/gpu_j"]  # CodeCarbon off: GPU is the only source
    assert m["energy/j_per_output_token"] == pytest.approx(m["energy/total_j"] / 100)
    assert m["energy/dynamic_j_per_output_token"] == pytest.approx(m["energy/gpu_dynamic_j"] / 100)
    assert m["energy/j_per_request"] == pytest.approx(m["energy/total_j"] / 4)
    assert m["power/gpu_mean_w"] == pytest.approx(400, rel=0.02)
    assert m["power/gpu_peak_w"] == pytest.approx(400)
    assert "energy/cpu_j" not in m and "emissions/kg_co2eq" not in m  # not measured: absent, not 0
    tags = monitor.tags()
    assert tags["llem.energy.gpu_method"] == "nvml_counter"
    assert tags["llem.energy.cpu_method"] == "unavailable: RAPL: off: energy.rapl is false; CodeCarbon: off: energy.codecarbon is false"
    assert tags["llem.energy.baseline"].startswith("measured")
    # the GPU counter is a measurement; with no other source the total is measured too
    assert m["energy/gpu_j_per_output_token"] == pytest.approx(m["energy/gpu_j"] / 100)
    assert m["energy/measured_j"] == m["energy/total_j"]
    assert m["energy/measured_j_per_output_token"] == m["energy/j_per_output_token"]
    assert tags["llem.energy.gpu_quality"] == "measured" and tags["llem.energy.total_quality"] == "measured"
    assert "llem.energy.cpu_quality" not in tags and tags["llem.energy.total_sources"] == "gpu"
    assert tags["llem.gpu.uuid"] == f"{gpus[0].uuid},{gpus[1].uuid}"
    assert tags["llem.gpu.name"] == "NVIDIA H100 80GB HBM3,NVIDIA H100 80GB HBM3"
    assert tags["llem.gpu.driver"] == "580.159.04"
    assert tags["llem.gpu.power_limit_w"] == "700,700"
    assert tags["llem.gpu.persistence_mode"] == "on,on"
    assert tags["llem.gpu.mig"] == "disabled,disabled"


def test_negative_dynamic_energy_is_logged_as_measured_with_a_warning(monitors):
    # Issue 11: it used to be floored at 0 silently, which biases means over trials upwards.
    gpu = FakeGpu(power_w=80.0)
    monitor = start(monitors, config(baseline=True), FakeNvml([gpu]))
    monitor.measure_baseline()
    gpu.set_power(60.0)  # below idle: drift, not negative work
    measured = run_phase(monitor, "measure", 0.2)
    m = monitor.metrics(measured, output_tokens=10, requests=1)
    assert m["energy/gpu_dynamic_j"] == pytest.approx(-20 * measured.duration_s, rel=0.1)
    assert m["energy/dynamic_j_per_output_token"] < 0
    assert "not floored" in monitor.tags()["llem.warning.negative_dynamic_energy"]


def test_load_and_warmup_energy_and_phase_readings(monitors):
    gpu = FakeGpu(power_w=100.0)
    monitor = start(monitors, config(), FakeNvml([gpu]))
    run_phase(monitor, "load", 0.1)
    gpu.set_power(300.0)
    warm = run_phase(monitor, "warmup", 0.1)
    measured = run_phase(monitor, "measure", 0.1)
    m = monitor.metrics(measured, output_tokens=0, requests=0)
    assert m["energy/load_j"] < m["energy/warmup_j"]
    assert m["energy/warmup_j"] == pytest.approx(warm.total_j)
    assert "energy/j_per_output_token" not in m  # no tokens: no per-token figure
    assert "power/gpu_baseline_w" not in m and "energy/gpu_dynamic_j" not in m


def test_power_integral_fallback_is_tagged(monitors):
    gpus = [FakeGpu(fail={"nvmlDeviceGetTotalEnergyConsumption": NVML_ERROR_NOT_SUPPORTED})]
    monitor = start(monitors, config(), FakeNvml(gpus))
    measured = run_phase(monitor, "measure", 0.3)
    assert monitor.metrics(measured, 10, 1)["energy/gpu_j"] == pytest.approx(100 * measured.duration_s, rel=0.05)
    assert monitor.tags()["llem.energy.gpu_method"] == "nvml_power_integral"


def test_cuda_visible_devices_picks_the_physical_gpu(monitors, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbbbbbb")
    monitor = start(monitors, config(device_map=None), FakeNvml(two_gpus()))
    measured = run_phase(monitor, "measure", 0.2)
    assert set(measured.gpu.energy_j) == {0}  # reported as cuda:0 ...
    assert measured.gpu.energy_j[0] == pytest.approx(200 * measured.duration_s, rel=0.03)  # ... measured on NVML GPU 1
    assert monitor.tags()["llem.gpu.uuid"].startswith("GPU-bbbbbbbb")


def test_timeline_has_real_timestamps_for_each_field(monitors):
    monitor = start(monitors, config(), FakeNvml(two_gpus()))
    before = time.time_ns() // 1_000_000
    run_phase(monitor, "measure", 0.2)
    after = time.time_ns() // 1_000_000
    timeline = monitor.timeline()
    for gpu in (0, 1):
        for suffix in ("power_w", "temperature_c", "sm_clock_mhz", "memory_used_mb", "utilization_pct"):
            points = timeline[f"timeline/gpu{gpu}_{suffix}"]
            assert len(points) >= 5
            assert all(before <= t <= after for t, _ in points)
            assert [t for t, _ in points] == sorted(t for t, _ in points)
    assert {v for _, v in timeline["timeline/gpu1_power_w"]} == {200.0}


def test_write_artifacts(monitors, tmp_path):
    monitor = start(monitors, config(baseline=True, baseline_s=0.2), FakeNvml(two_gpus()))
    monitor.measure_baseline()
    run_phase(monitor, "load", 0.1)
    run_phase(monitor, "measure", 0.2)
    monitor.close()
    paths = monitor.write_artifacts(tmp_path / "energy")
    names = {p.relative_to(tmp_path / "energy").as_posix() for p in paths}
    assert {"timeline.parquet", "plots/power_timeline.png", "energy_phases.json"} <= names
    import pandas as pd

    table = pd.read_parquet(tmp_path / "energy" / "timeline.parquet")
    assert set(table["gpu"]) == {0, 1} and (table["power_w"] > 0).all()
    png = (tmp_path / "energy" / "plots" / "power_timeline.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_no_nvml_library_leaves_gpu_energy_absent_with_the_reason(monitors):
    monitor = start(monitors, config(baseline=True), FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    monitor.measure_baseline()
    measured = run_phase(monitor, "measure", 0.05)
    m = monitor.metrics(measured, 10, 1)
    assert not any(k.startswith(("energy/gpu", "power/")) for k in m)
    assert "energy/total_j" not in m  # nothing measured at all: absent
    tags = monitor.tags()
    assert tags["llem.energy.gpu_method"].startswith("unavailable: NVML cannot start")
    assert "LibraryNotFound" in tags["llem.energy.gpu_method"]
    assert tags["llem.energy.baseline"].startswith("skipped: no GPU")
    assert monitor.timeline() == {}


def test_energy_gpu_nvml_required_raises_our_error():
    with pytest.raises(EnergyError, match="energy.gpu is 'nvml'.*energy.gpu: auto"):
        EnergyMonitor(config(gpu="nvml"), nvml=FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))


def test_energy_gpu_off_never_touches_nvml(monitors):
    nvml = FakeNvml()
    monitor = start(monitors, config(gpu="off"), nvml)
    run_phase(monitor, "measure", 0.01)
    assert nvml.calls == []
    assert monitor.tags()["llem.energy.gpu_method"] == "unavailable: energy.gpu is off"


def test_gpu_lost_mid_run_never_escapes(monitors):
    gpu = FakeGpu()
    monitor = start(monitors, config(), FakeNvml([gpu]))
    monitor.begin("measure")
    for name in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetFieldValues",
                 "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetTemperature"):
        gpu.fail[name] = 15  # GPU is lost
    time.sleep(0.1)
    measured = monitor.end("measure")
    assert measured.gpu is None and "too few power samples" in measured.gpu_reason
    assert "energy/gpu_j" not in monitor.metrics(measured, 10, 1)
    assert monitor.tags()["llem.energy.gpu_method"].startswith("unavailable:")
    monitor.close()
    monitor.close()  # idempotent


def test_windows_do_not_nest(monitors):
    monitor = start(monitors, config(gpu="off"), None)
    monitor.begin("load")
    with pytest.raises(EnergyError, match="still open"):
        monitor.begin("warmup")
    with pytest.raises(EnergyError, match="was not begun"):
        monitor.end("warmup")


# --- validity warnings -----------------------------------------------------------------


def warning_tags(monitors, gpus, during=None, seconds=0.15):
    monitor = start(monitors, config(), FakeNvml(gpus))
    run_phase(monitor, "measure", seconds, during)
    # cpu_contention depends on what else this shared machine runs: its own tests are in test_energy_contention.py
    return {k: v for k, v in monitor.tags().items() if k.startswith("llem.warning.") and k != "llem.warning.cpu_contention"}


def test_a_clean_window_only_warns_that_it_is_short(monitors):
    warnings = warning_tags(monitors, [FakeGpu(pids=[os.getpid()])])
    assert list(warnings) == ["llem.warning.short_window"]
    assert "< 5 s (NVML GPU energy" in warnings["llem.warning.short_window"]  # the NVML meter's minimum


def test_throttling_warning(monitors):
    gpu = FakeGpu()
    warnings = warning_tags(monitors, [gpu], during=lambda: setattr(gpu, "throttle_reasons", 0x40 | 0x01))
    assert "hardware thermal slowdown" in warnings["llem.warning.throttling"]
    assert "idle" not in warnings["llem.warning.throttling"]  # GpuIdle is not throttling


def test_temperature_rise_warning(monitors):
    gpu = FakeGpu(temperature_c=40)
    warnings = warning_tags(monitors, [gpu], during=lambda: setattr(gpu, "temperature_c", 52))
    assert "+12 C" in warnings["llem.warning.temperature_rise"]


def test_small_temperature_rise_is_fine(monitors):
    gpu = FakeGpu(temperature_c=40)
    assert "llem.warning.temperature_rise" not in warning_tags(monitors, [gpu], during=lambda: setattr(gpu, "temperature_c", 49))


def test_other_processes_warning(monitors):
    warnings = warning_tags(monitors, [FakeGpu(pids=[os.getpid(), 4242])])
    assert "4242" in warnings["llem.warning.other_processes"]


def test_persistence_mode_off_warning(monitors):
    warnings = warning_tags(monitors, [FakeGpu(persistence_mode=0)])
    assert "nvidia-smi -pm 1" in warnings["llem.warning.persistence_mode_off"]


def test_warnings_of_repeated_trials_name_their_trial(monitors):
    monitor = start(monitors, config(), FakeNvml([FakeGpu()]))
    run_phase(monitor, "measure", 0.05)
    run_phase(monitor, "measure/2", 0.05)
    text = monitor.tags()["llem.warning.short_window"]
    assert text.startswith("measure: ") and " | measure/2: " in text


def test_sampled_energy_cross_check_matches_the_counter(monitors):
    monitor = start(monitors, config(), FakeNvml(two_gpus()))
    measured = run_phase(monitor, "measure", 0.3)
    assert monitor.sampled_energy_j("measure") == pytest.approx(measured.gpu.total_j, rel=0.05)
    assert monitor.sampled_energy_j("load") is None


def test_temperatures_for_the_cooldown_between_trials(monitors):
    gpus = two_gpus(temperature_c=35)
    monitor = start(monitors, config(baseline=True, baseline_s=0.2), FakeNvml(gpus))
    assert monitor.baseline_temperature_c() is None  # no baseline yet
    monitor.measure_baseline()
    assert monitor.baseline_temperature_c() == 35
    gpus[1].temperature_c = 71
    assert monitor.gpu_temperature_c() == 71  # the hottest measured GPU
    monitor.close()
    assert monitor.gpu_temperature_c() is None


def test_no_gpu_temperatures_without_nvml(monitors):
    monitor = start(monitors, config(baseline=True), FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    assert monitor.measure_baseline() is False  # skipped: nothing to measure
    assert monitor.baseline_temperature_c() is None and monitor.gpu_temperature_c() is None
