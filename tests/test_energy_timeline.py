"""Power samples in time order before integration; metric histories of at most 1,000 points."""

import random

import pytest

from llem_mlflow.energy.nvml import integrate_power_j
from llem_mlflow.energy.readings import GpuSample
from llem_mlflow.energy.timeline import MAX_POINTS, downsampling_note, metric_histories


def samples(n, gpu=0, start_ms=1_000_000, interval_ms=10):
    return [GpuSample(start_ms + k * interval_ms, k * interval_ms / 1000, gpu, 100.0 + (k % 50)) for k in range(n)]


def test_the_integral_does_not_depend_on_the_order_samples_arrived_in():
    ordered = [GpuSample(0, t, 0, p) for t, p in [(0.0, 100.0), (1.0, 200.0), (2.0, 200.0), (3.0, 100.0)]]
    shuffled = [ordered[2], ordered[0], ordered[3], ordered[1]]  # edge ticks and the thread interleave
    assert integrate_power_j(shuffled, 0) == integrate_power_j(ordered, 0) == pytest.approx(150 + 200 + 150)


def test_histories_are_in_time_order():
    points = samples(20)
    random.Random(1).shuffle(points)
    history = metric_histories(points)["timeline/gpu0_power_w"]
    assert [t for t, _ in history] == sorted(t for t, _ in history)


def test_long_series_are_downsampled_to_1000_points_that_keep_the_mean():
    points = samples(4321) + samples(4321, gpu=1)
    histories = metric_histories(points)
    for name in ("timeline/gpu0_power_w", "timeline/gpu1_power_w"):
        history = histories[name]
        assert len(history) == MAX_POINTS
        mean_before = sum(s.power_w for s in points if s.gpu == 0) / 4321
        assert sum(v for _, v in history) / len(history) == pytest.approx(mean_before, rel=0.01)
        assert history[0][0] >= points[0].timestamp_ms and history[-1][0] <= points[4320].timestamp_ms
    assert "4321 samples per GPU -> 1000 points" in downsampling_note(points)


def test_short_series_are_left_alone():
    points = samples(MAX_POINTS)
    assert len(metric_histories(points)["timeline/gpu0_power_w"]) == MAX_POINTS
    assert downsampling_note(points) is None
