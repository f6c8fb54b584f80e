"""The validity checks as functions: each fires on its condition and stays quiet otherwise."""

from llem_mlflow.energy import warnings as checks
from llem_mlflow.energy.readings import GpuSample


def sample(gpu=0, temperature=None, throttle=None):
    return GpuSample(0, 0.0, gpu, 100.0, temperature_c=temperature, throttle_reasons=throttle)


def test_short_window_uses_the_meters_threshold():
    text = checks.short_window(4.9, 5.0, "NVML GPU energy")
    assert "< 5 s (NVML GPU energy)" in text and "measure.min_duration_s" in text
    assert checks.short_window(5.0, 5.0, "NVML GPU energy") is None
    assert checks.short_window(0.5, 1.0, "no GPU") and checks.short_window(1.0, 1.0, "no GPU") is None


def test_throttling_ignores_idle_sync_boost_and_app_clocks():
    assert checks.throttling([sample(throttle=0x01 | 0x02 | 0x10)]) is None
    assert "software power cap" in checks.throttling([sample(throttle=0x04)])


def test_temperature_rise_is_per_gpu_from_the_window_start():
    samples = [sample(0, 40), sample(1, 60), sample(0, 45), sample(1, 71.5)]
    text = checks.temperature_rise(samples)
    assert "GPU 1 +12 C" in text and "GPU 0" not in text


def test_other_processes_in_and_out_of_a_pid_namespace():
    me = {100}
    assert checks.other_processes({0: [100]}, me) is None
    assert checks.other_processes({0: [7]}, me) is None  # our own process seen with a host PID
    assert "2 other(s) among PIDs 7, 8, 9" in checks.other_processes({0: [9, 8, 7]}, me)
    assert "PIDs 5" in checks.other_processes({0: [100, 5]}, me)
    assert checks.other_processes({0: None}, me) is None  # not reported by the driver


def test_data_parallel_ranks_are_not_other_processes():
    ours = {100, 101}  # the lead and the worker it started, each on its own GPU
    assert checks.other_processes({0: [100], 1: [101]}, ours) is None
    assert "GPU 1: PIDs 5" in checks.other_processes({0: [100], 1: [101, 5]}, ours)


def test_persistence_mode_off():
    assert checks.persistence_mode_off({0: True, 1: None}) is None
    assert "GPU(s) 1" in checks.persistence_mode_off({0: True, 1: False})
