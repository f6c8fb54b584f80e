"""The fake GPU itself behaves like the documented boards (docs/methodology.md, "The fake GPU").

On a manual clock, so each behaviour is exact and fast to check; the pipeline's own tests on the
fake are in test_fakegpu_runs.py.
"""

from __future__ import annotations

import time

import pytest
from fakegpu import CounterReset, CoTenant, Gpu, Scenario, Schedule
from fakegpu.nvml import NVMLError_NotSupported

from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.energy.monitor import EnergyMonitor


class ManualClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def machine(*gpus, seed=0):
    clock = ManualClock()
    built = Scenario(list(gpus), seed=seed).build(clock)
    built.nvml.nvmlInit()
    return built, clock


DECODE_FROM_1S = Schedule(((0.0, "idle"), (1.0, "decode")))


def test_the_counter_advances_in_steps_of_its_period():
    m, clock = machine(Gpu("H100", schedule=DECODE_FROM_1S))
    nvml, board = m.nvml, m.boards[0]
    values = []
    for k in range(100):  # 1 s of decode, read every 10 ms
        clock.now = 1001.5 + k * 0.01
        values.append(nvml.nvmlDeviceGetTotalEnergyConsumption(board))
    steps = [b - a for a, b in zip(values, values[1:]) if b != a]
    assert 9 <= len(steps) <= 11  # ~every 100 ms, not continuously
    assert all(30_000 < s < 36_000 for s in steps)  # ~330 W x 100 ms, in mJ


def test_usage_is_a_1s_average_on_hopper_and_the_instant_field_is_not():
    m, clock = machine(Gpu("H100", schedule=DECODE_FROM_1S, changes={"noise_w": 0.0}))
    nvml, board = m.nvml, m.boards[0]
    clock.now = 1001.5  # half a second after the step from idle to decode
    instant = nvml.nvmlDeviceGetFieldValues(board, [nvml.NVML_FI_DEV_POWER_INSTANT])[0].value.uiVal / 1000
    average = nvml.nvmlDeviceGetPowerUsage(board) / 1000
    assert instant == pytest.approx(330, rel=0.03)
    assert average == pytest.approx((65 + 330) / 2, rel=0.05)  # lags by ~0.5 s


@pytest.mark.parametrize("board", ["V100", "A100"])
def test_usage_is_instantaneous_on_ga100_and_older_without_an_instant_field(board):
    m, clock = machine(Gpu(board, schedule=DECODE_FROM_1S, changes={"noise_w": 0.0}))
    clock.now = 1001.5
    decode_w = m.boards[0].spec.decode_w
    assert m.nvml.nvmlDeviceGetPowerUsage(m.boards[0]) / 1000 == pytest.approx(decode_w, rel=0.03)
    field = m.nvml.nvmlDeviceGetFieldValues(m.boards[0], [m.nvml.NVML_FI_DEV_POWER_INSTANT])[0]
    assert field.nvmlReturn != 0


def test_pre_volta_has_no_counter_and_mig_devices_no_power():
    m, _ = machine(Gpu("P100"), Gpu("A100", mig_instances=2))
    with pytest.raises(NVMLError_NotSupported):
        m.nvml.nvmlDeviceGetTotalEnergyConsumption(m.boards[0])
    mig = m.nvml.nvmlDeviceGetMigDeviceHandleByIndex(m.boards[1], 1)
    assert m.nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig) is m.boards[1]
    with pytest.raises(NVMLError_NotSupported):
        m.nvml.nvmlDeviceGetPowerUsage(mig)


def test_sensor_noise_is_seeded():
    def readings(seed):
        m, clock = machine(Gpu("H100"), seed=seed)
        out = []
        for k in range(20):
            clock.now = 1000.0 + k * 0.05
            out.append(m.nvml.nvmlDeviceGetFieldValues(m.boards[0], [m.nvml.NVML_FI_DEV_POWER_INSTANT])[0].value.uiVal)
        return out

    assert readings(1) == readings(1) != readings(2)
    assert len(set(readings(1))) > 5  # noisy, around the 65 W idle floor
    assert all(60_000 < mw < 72_000 for mw in readings(1))


def test_heat_power_cap_and_thermal_slowdown_set_their_reason_bits():
    hot = Gpu("H100", schedule=DECODE_FROM_1S,
              changes={"power_limit_w": 250.0, "thermal_tau_s": 0.3, "c_per_w": 0.15, "slowdown_c": 50.0})  # fmt: skip
    m, clock = machine(hot)
    board = m.boards[0]
    clock.now = 1000.9
    idle_c, idle_reasons = m.nvml.nvmlDeviceGetTemperature(board, 0), m.nvml.nvmlDeviceGetCurrentClocksEventReasons(board)
    assert idle_reasons == 0x01  # GPU idle only
    clock.now = 1001.05
    assert m.nvml.nvmlDeviceGetCurrentClocksEventReasons(board) & 0x04  # SW power cap: 330 W wanted, 250 W allowed
    clock.now = 1003.0
    assert m.nvml.nvmlDeviceGetCurrentClocksEventReasons(board) & 0x40  # HW thermal slowdown
    assert m.nvml.nvmlDeviceGetTemperature(board, 0) - idle_c > 10
    assert m.nvml.nvmlDeviceGetClockInfo(board, 1) < board.spec.max_clock_mhz


def test_events_counter_reset_and_co_tenant():
    m, clock = machine(Gpu("H100", events=(CounterReset(at_s=1.0), CoTenant(pid=4242, watts=100.0, at_s=2.0))))
    nvml, board = m.nvml, m.boards[0]
    clock.now = 1000.95
    before = nvml.nvmlDeviceGetTotalEnergyConsumption(board)
    clock.now = 1001.5
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(board) < before  # the driver reloaded
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(board)] == []
    clock.now = 1003.5
    assert [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(board)] == [4242]
    assert nvml.nvmlDeviceGetPowerUsage(board) > 150_000  # idle + the co-tenant's work


# --- the monitor against realistic boards, where a number can be checked against the truth -------


def config(**energy):
    return ExperimentConfig(
        model="random:tiny", baseline={"enabled": False},
        energy={"gpu": "nvml", "codecarbon": False, "sample_interval_ms": 20, **energy},
    )  # fmt: skip


def measured_against_truth(gpu: Gpu, seconds: float):
    """(reading, true energy) of one window on a board that goes from idle to decode 0.3 s in."""
    m = Scenario([gpu]).build()
    board = m.boards[0]
    monitor = EnergyMonitor(config(), m.hardware)
    try:
        time.sleep(1.2)  # let the 1 s average settle at idle
        start = board.now_s()
        board._schedule = Schedule(((0.0, "idle"), (start + 0.3, "decode")))
        before = board.true_energy_j()
        monitor.begin("measure")
        time.sleep(seconds)
        reading = monitor.end("measure")
        after = board.true_energy_j()
        return reading, after - before, monitor.tags()
    finally:
        monitor.close()


def test_the_instant_field_integrates_close_to_the_truth():
    reading, truth, tags = measured_against_truth(Gpu("H100", changes={"has_counter": False}), 2.0)
    assert reading.gpu.method == "nvml_power_integral"
    assert reading.gpu.total_j == pytest.approx(truth, rel=0.05)
    assert "llem.warning.averaged_power" not in tags


def test_the_averaged_power_lags_and_the_warning_bounds_the_error():
    reading, truth, tags = measured_against_truth(Gpu("A10", changes={"has_counter": False}), 2.0)
    assert reading.gpu.method == "nvml_averaged_power_integral"
    error = truth - reading.gpu.total_j
    bound = float(tags["llem.warning.averaged_power"].split("up to ")[2].split(" J")[0])
    assert 10 < error <= 2 * bound  # it under-reads a rising window; never more than both edges' bound


def test_a_counter_that_has_not_advanced_falls_back_to_the_samples():
    # A window shorter than the counter's period: a 100 ms counter under a 50 ms window, scaled up.
    reading, truth, tags = measured_against_truth(Gpu("H100", changes={"counter_period_s": 1000.0}), 0.5)
    assert reading.gpu.method == "nvml_power_integral" and reading.gpu.total_j > 0
    assert "did not advance" in tags["llem.warning.counter_stalled"]
