"""The NVML source against a fake NVML library: units, per-GPU sums, fallback, errors."""

import time

import pytest
from fake_nvml import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeGpu,
    FakeNvml,
    two_gpus,
)

from llem_mlflow.energy.devices import GpuTarget
from llem_mlflow.energy.nvml import (
    NvmlError,
    NvmlGpuSource,
    NvmlUnavailable,
    PowerSampler,
    integrate_power_j,
    open_device,
    open_nvml,
)
from llem_mlflow.energy.readings import GpuSample
from llem_mlflow.errors import LlemError


def make_source(gpus, interval_s=0.02, synchronize=lambda: None):
    nvml = open_nvml(FakeNvml(gpus))
    devices = [open_device(nvml, GpuTarget(i, i, g.uuid)) for i, g in enumerate(gpus)]
    sampler = PowerSampler(nvml, devices, interval_s)
    return NvmlGpuSource(nvml, devices, sampler, synchronize), sampler


def window(source, seconds):
    source.begin()
    time.sleep(seconds)
    return source.end()


def test_counter_deltas_are_joules_per_gpu_and_sum():
    source, _ = make_source(two_gpus())
    reading = window(source, 0.3)
    assert reading.method == "nvml_counter"
    # the counter is in mJ; 100 W and 200 W over the window's duration, in J
    assert reading.energy_j[0] == pytest.approx(100 * reading.duration_s, rel=0.02)
    assert reading.energy_j[1] == pytest.approx(200 * reading.duration_s, rel=0.02)
    assert reading.total_j == pytest.approx(reading.energy_j[0] + reading.energy_j[1])
    assert reading.mean_power_w == pytest.approx(300, rel=0.02)
    assert reading.peak_power_w == pytest.approx(300)


def test_synchronize_runs_at_both_edges():
    calls = []
    source, _ = make_source([FakeGpu()], synchronize=lambda: calls.append(time.monotonic()))
    window(source, 0.05)
    assert len(calls) == 2


def test_counter_not_supported_falls_back_to_integrating_sampled_power():
    gpus = two_gpus(fail={"nvmlDeviceGetTotalEnergyConsumption": NVML_ERROR_NOT_SUPPORTED})
    source, sampler = make_source(gpus)
    assert source.method == "nvml_power_integral"
    sampler.start()
    try:
        reading = window(source, 0.3)
    finally:
        sampler.stop()
    assert reading.method == "nvml_power_integral"
    assert reading.samples >= 5  # the sampler ran inside the window
    assert reading.energy_j[0] == pytest.approx(100 * reading.duration_s, rel=0.05)
    assert reading.energy_j[1] == pytest.approx(200 * reading.duration_s, rel=0.05)


def test_counter_lost_mid_run_falls_back_for_that_window():
    gpu = FakeGpu(power_w=150.0)
    source, sampler = make_source([gpu])
    source.begin()
    gpu.fail["nvmlDeviceGetTotalEnergyConsumption"] = NVML_ERROR_GPU_IS_LOST
    time.sleep(0.1)
    reading = source.end()  # no sampler thread: the two edge ticks still integrate
    assert reading.method == "nvml_power_integral"
    assert reading.energy_j[0] == pytest.approx(150 * reading.duration_s, rel=0.1)


def test_no_counter_and_no_power_raises_our_error_not_nvmls():
    gpu = FakeGpu(instant_power=False, fail={
        "nvmlDeviceGetTotalEnergyConsumption": NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetPowerUsage": NVML_ERROR_NOT_SUPPORTED,
    })
    source, _ = make_source([gpu])
    source.begin()
    with pytest.raises(NvmlError, match="too few power samples") as caught:
        source.end()
    assert isinstance(caught.value, LlemError)


def test_sampler_prefers_instant_power_and_records_every_field_in_units():
    gpu = FakeGpu(power_w=250.0, average_power_w=180.0, temperature_c=55, sm_clock_mhz=1755,
                  memory_used_bytes=3 * 1024**3, utilization_pct=87, throttle_reasons=0x40)
    _, sampler = make_source([gpu])
    sampler.sample_now()
    sample = sampler.samples[0]
    assert sample.power_w == 250.0  # the instant field, not the 1 s average
    assert (sample.temperature_c, sample.sm_clock_mhz, sample.utilization_pct) == (55, 1755, 87)
    assert sample.memory_used_mb == 3 * 1024
    assert sample.throttle_reasons == 0x40
    assert abs(sample.timestamp_ms - time.time() * 1000) < 5000  # real wall-clock ms since the epoch


def test_sampler_uses_average_power_without_the_instant_field():
    _, sampler = make_source([FakeGpu(power_w=250.0, average_power_w=180.0, instant_power=False)])
    sampler.sample_now()
    assert sampler.samples[0].power_w == 180.0


def test_sampler_leaves_unsupported_fields_out_and_stops_asking():
    nvml_lib = FakeNvml([FakeGpu(fail={"nvmlDeviceGetTemperature": NVML_ERROR_NOT_SUPPORTED})])
    nvml = open_nvml(nvml_lib)
    device = open_device(nvml, GpuTarget(0, 0, "x"))
    sampler = PowerSampler(nvml, [device], 0.01)
    sampler.sample_now()
    sampler.sample_now()
    assert [s.temperature_c for s in sampler.samples] == [None, None]
    assert nvml_lib.calls.count("nvmlDeviceGetTemperature") == 1


def test_sampler_thread_ticks_at_the_configured_interval():
    _, sampler = make_source([FakeGpu()], interval_s=0.05)
    sampler.start()
    time.sleep(0.5)
    sampler.stop()
    assert 5 <= len(sampler.samples) <= 12  # ~10; a loaded CI machine may delay a few ticks


def test_sampler_thread_survives_unexpected_errors_and_says_why():
    nvml = open_nvml(FakeNvml([FakeGpu()]))
    device = open_device(nvml, GpuTarget(0, 0, "x"))
    sampler = PowerSampler(nvml, [device], 0.01)
    sampler._sample = lambda *a: 1 / 0  # a bug inside a tick must not kill the run
    sampler.start()
    time.sleep(0.1)
    sampler.stop()
    assert "ZeroDivisionError" in sampler.error


def test_library_not_found_is_our_unavailable_error():
    with pytest.raises(NvmlUnavailable, match="LibraryNotFound") as caught:
        open_nvml(FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    assert caught.value.code == NVML_ERROR_LIBRARY_NOT_FOUND


def test_no_gpu_is_unavailable():
    with pytest.raises(NvmlUnavailable, match="no GPU"):
        open_nvml(FakeNvml([]))


def test_device_facts_are_read_with_units():
    nvml = open_nvml(FakeNvml([FakeGpu(power_limit_mw=350_000, persistence_mode=0, mig_mode=1)]))
    device = open_device(nvml, GpuTarget(0, 0, "x"))
    assert device.power_limit_w == 350.0
    assert device.persistence_mode is False
    assert device.mig == "enabled"
    assert device.counter_supported and device.instant_power_supported


def test_trapezoid_integral():
    samples = [GpuSample(0, t, 0, p) for t, p in [(0.0, 100.0), (1.0, 200.0), (3.0, 200.0)]]
    assert integrate_power_j(samples, 0) == pytest.approx(150 + 400)
    assert integrate_power_j(samples[:1], 0) is None
