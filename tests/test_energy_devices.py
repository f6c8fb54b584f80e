"""Which GPUs are measured: CUDA devices matched to NVML boards by UUID (MIG rule); without CUDA in
the process, CUDA_VISIBLE_DEVICES (indices or UUIDs) over NVML's order x pytorch.device_map."""

import pytest

from llem_mlflow.energy.devices import CudaDevice, NvmlBoard, match_by_uuid, select_gpus, uuid_key

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


# --- by UUID: CUDA's devices matched to NVML's boards ------------------------------------------

BOARDS = [
    NvmlBoard(0, "GPU-aaaaaaaa-0000-4000-8000-000000000001"),
    NvmlBoard(1, "GPU-bbbbbbbb-0000-4000-8000-000000000002"),
    NvmlBoard(2, "GPU-cccccccc-0000-4000-8000-000000000003", mig_uuids=("MIG-c1c1c1c1-0000-4000-8000-000000000001",)),
    NvmlBoard(3, "GPU-dddddddd-0000-4000-8000-000000000004",
              mig_uuids=("MIG-d1d1d1d1-0000-4000-8000-000000000001", "MIG-d2d2d2d2-0000-4000-8000-000000000002")),
]  # fmt: skip


def test_torch_and_nvml_spellings_of_a_uuid_compare_equal():
    assert uuid_key("GPU-AAAA-1") == uuid_key("aaaa-1") == uuid_key("MIG-aaaa-1")


def test_cuda_order_is_kept_and_boards_found_by_uuid():
    devices = [CudaDevice(0, "bbbbbbbb-0000-4000-8000-000000000002"), CudaDevice(1, "aaaaaaaa-0000-4000-8000-000000000001")]
    targets, reason = match_by_uuid(devices, BOARDS)
    assert reason is None
    assert [(t.cuda_index, t.nvml_index) for t in targets] == [(0, 1), (1, 0)]


def test_a_mig_board_is_measured_only_when_all_its_instances_are_ours():
    whole, reason = match_by_uuid([CudaDevice(0, "c1c1c1c1-0000-4000-8000-000000000001")], BOARDS)
    assert reason is None and whole[0].nvml_index == 2 and whole[0].mig_instances == BOARDS[2].mig_uuids
    shared, reason = match_by_uuid([CudaDevice(0, "d1d1d1d1-0000-4000-8000-000000000001")], BOARDS)
    assert shared == [] and "2 MIG instance(s) of which this run uses 1" in reason


def test_an_unknown_uuid_is_a_reason_not_a_guess():
    targets, reason = match_by_uuid([CudaDevice(0, "eeeeeeee-0000-4000-8000-000000000009")], BOARDS)
    assert targets == [] and "matches no GPU that NVML sees" in reason


def test_data_parallel_measures_one_gpu_per_process():
    def measured(device_map, visible, processes):
        targets, reason = select_gpus(device_map, visible, UUIDS, processes)
        assert reason is None, reason
        return [(t.cuda_index, t.nvml_index) for t in targets]

    assert measured(None, None, 2) == [(0, 0), (1, 1)]
    assert measured("cuda", "3,2,1", 3) == [(0, 3), (1, 2), (2, 1)]
    targets, reason = select_gpus(None, "1", UUIDS, 2)
    assert targets == [] and "num_processes 2 needs 2 GPUs, 1 visible" in reason
    assert select_gpus("cpu", None, UUIDS, 2)[0] == []  # every process on the CPU: no GPU to measure
