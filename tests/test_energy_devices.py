"""Which GPUs are measured: CUDA_VISIBLE_DEVICES (indices or UUIDs) x pytorch.device_map."""

import pytest

from llem_mlflow.energy.devices import select_gpus

UUIDS = ["GPU-aaaa-1", "GPU-bbbb-2", "GPU-cccc-3", "GPU-dddd-4"]


def nvml_indices(device_map, visible):
    targets, reason = select_gpus(device_map, visible, UUIDS)
    assert reason is None, reason
    return [(t.cuda_index, t.nvml_index) for t in targets]


def test_default_device_map_measures_the_first_visible_gpu():
    assert nvml_indices(None, None) == [(0, 0)]
    assert nvml_indices(None, "2,3") == [(0, 2)]
    assert nvml_indices("cuda", "3") == [(0, 3)]


def test_cuda_n_is_counted_among_visible_devices():
    assert nvml_indices("cuda:1", "2,0") == [(1, 0)]


@pytest.mark.parametrize("device_map", ["auto", "balanced", "sequential"])
def test_spreading_device_maps_measure_every_visible_gpu(device_map):
    assert nvml_indices(device_map, None) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert nvml_indices(device_map, "3,1") == [(0, 3), (1, 1)]


def test_uuids_and_unique_prefixes_are_resolved():
    assert nvml_indices("auto", "GPU-cccc-3,GPU-aaaa") == [(0, 2), (1, 0)]


def test_parsing_stops_at_the_first_invalid_entry_like_cuda():
    assert nvml_indices("auto", "1,-1,2") == [(0, 1)]


@pytest.mark.parametrize(
    ("device_map", "visible", "words"),
    [
        ("cpu", None, "no GPU"),
        ("cuda:4", None, "not visible"),
        (None, "", "no CUDA device is visible"),
        (None, "-1", "no CUDA device is visible"),
        (None, "7", "NVML sees 4"),
        (None, "MIG-1234", "MIG"),
        (None, "GPU-", "matches 4"),
    ],
)
def test_no_measurable_gpu_gives_a_reason(device_map, visible, words):
    targets, reason = select_gpus(device_map, visible, UUIDS)
    assert targets == []
    assert words in reason
