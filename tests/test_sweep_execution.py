"""The `execution:` section, its guards, and the pure parts of the Ray executor (no cluster here)."""

import subprocess
import sys
import textwrap

import pytest
from fake_nvml import FakeGpu, FakeNvml
from helpers import invoke_cli

from llem_mlflow.errors import ConfigError
from llem_mlflow.sweep.child import child_env
from llem_mlflow.sweep.execution import (
    Execution,
    check_tracking_reachable,
    is_local_address,
    is_local_tracking,
    read_execution,
    with_options,
)
from llem_mlflow.sweep.placement import Span, TaskPlacement, gpu_uuids, host_sharing, host_tags, peak_concurrency, point_slots
from llem_mlflow.sweep.study import parse_study_text

STUDY = textwrap.dedent("""
    name: exec
    base: {model: "random:tiny", max_output_tokens: 4}
    sweep:
      pytorch.batch_size: [1, 2]
""")


def test_no_execution_section_is_the_local_executor():
    assert read_execution(None, "s.yaml") == Execution()
    assert Execution().executor == "local" and Execution().gpus_per_point == 1


def test_execution_section_is_read_and_does_not_change_the_study_hash():
    plain = parse_study_text(STUDY, "s.yaml")
    on_ray = parse_study_text(
        STUDY + "execution: {executor: ray, ray_address: auto, gpus_per_point: 2, cpus_per_point: 0.5, "
        "max_concurrent: 3, placement: node_exclusive}\n",
        "s.yaml",
    )
    assert on_ray.execution == Execution("ray", "auto", 2, 0.5, 3, "node_exclusive")
    assert on_ray.study_hash == plain.study_hash  # where points run is not what they measure: resume works across executors


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"gpus_per_point": 0.5}, "gpus_per_point is 0.5: a point gets whole GPUs only"),
        ({"gpus_per_point": 1.5}, "gpus_per_point is 1.5: a point gets whole GPUs only"),
        ({"gpus_per_point": -1}, "gpus_per_point must be a whole number of GPUs >= 0"),
        ({"gpus_per_point": "1"}, "gpus_per_point must be a whole number of GPUs >= 0"),
        ({"cpus_per_point": 0}, "cpus_per_point must be a number > 0"),
        ({"max_concurrent": 0}, "max_concurrent must be a whole number >= 1"),
        ({"max_concurrent": 1.5}, "max_concurrent must be a whole number >= 1"),
        ({"executor": "slurm"}, "executor is 'slurm'; allowed: local, ray"),
        ({"placement": "spread"}, "placement is 'spread'; allowed: gpu_exclusive, node_exclusive"),
        ({"gpu_per_point": 1}, "unknown key 'gpu_per_point'"),
        ({"ray_address": 6379}, "ray_address must be a string"),
    ],
)
def test_bad_execution_values_are_refused_naming_the_field(section, needle):
    with pytest.raises(ConfigError) as error:
        read_execution({"executor": "ray", **section}, "s.yaml")
    assert needle in str(error.value)
    assert str(error.value).startswith("s.yaml: execution")


def test_cli_options_replace_the_file_values_and_empty_ones_keep_them():
    base = Execution("ray", None, 1, 1.0, None, "gpu_exclusive")
    assert with_options(base, "", "", "", "") == base  # MLproject's empty defaults
    assert with_options(base, "ray", "auto", "2", "4") == Execution("ray", "auto", 2, 1.0, 4, "gpu_exclusive")
    assert with_options(Execution(), "ray").executor == "ray"
    with pytest.raises(ConfigError, match="whole GPUs only"):
        with_options(base, gpus_per_point="0.5")
    with pytest.raises(ConfigError, match="--max-concurrent must be a number"):
        with_options(base, max_concurrent="many")
    with pytest.raises(ConfigError, match="--ray-address applies to the Ray executor only"):
        with_options(Execution(), ray_address="auto")


@pytest.mark.parametrize(
    ("address", "local"),
    [
        (None, True), ("", True), ("local", True), ("127.0.0.1:6379", True), ("localhost:6379", True),
        ("[::1]:6379", True), ("ray://127.0.0.1:10001", True),
        ("auto", False), ("10.0.0.5:6379", False), ("ray://head.example:10001", False), ("head:6379", False),
    ],
)  # fmt: skip
def test_which_ray_addresses_stay_on_this_machine(address, local):
    assert is_local_address(address) is local


@pytest.mark.parametrize(
    ("uri", "local"),
    [("sqlite:///m.db", True), ("file:///tmp/mlruns", True), ("./mlruns", True), ("/abs/mlruns", True),
     ("http://127.0.0.1:5000", False), ("https://mlflow.example", False), ("databricks", False),
     ("databricks://profile", False)],
)  # fmt: skip
def test_which_tracking_uris_are_files_here(uri, local):
    assert is_local_tracking(uri) is local


def test_a_file_store_with_a_remote_cluster_is_refused_with_the_fix():
    remote = Execution("ray", "auto")
    with pytest.raises(ConfigError) as error:
        check_tracking_reachable(remote, "sqlite:///mlflow.db", None)
    assert "start a tracking server" in str(error.value).lower() and "mlflow server" in str(error.value)
    with pytest.raises(ConfigError):  # RAY_ADDRESS counts like --ray-address, as in ray.init()
        check_tracking_reachable(Execution("ray"), "file:///tmp/mlruns", "10.0.0.5:6379")
    check_tracking_reachable(remote, "http://tracking:5000", None)  # a server: fine
    check_tracking_reachable(Execution("ray"), "sqlite:///mlflow.db", None)  # a local instance: fine
    check_tracking_reachable(Execution("local", "auto"), "sqlite:///mlflow.db", None)  # not on Ray: fine


def test_cli_refuses_sqlite_with_a_remote_ray_address_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "study.yaml").write_text(STUDY)
    result = invoke_cli("sweep", str(tmp_path / "study.yaml"), "--executor", "ray", "--ray-address", "ray://192.0.2.10:10001", expect_exit=2)
    assert "whose workers cannot write to it" in result.output and "mlflow server" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # no run, not even a store


def test_cli_refuses_a_fractional_gpu_with_exit_2(tmp_path):
    (tmp_path / "study.yaml").write_text(STUDY + "execution: {executor: ray, gpus_per_point: 0.25}\n")
    result = invoke_cli("sweep", str(tmp_path / "study.yaml"), "--dry-run", expect_exit=2)
    assert "execution: gpus_per_point is 0.25: a point gets whole GPUs only" in result.output
    (tmp_path / "plain.yaml").write_text(STUDY)
    result = invoke_cli("sweep", str(tmp_path / "plain.yaml"), "--executor", "ray", "--gpus-per-point", "0.5", expect_exit=2)
    assert "gpus_per_point is 0.5: a point gets whole GPUs only" in result.output


def test_dry_run_on_ray_prints_the_executor(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "study.yaml").write_text(STUDY)
    result = invoke_cli("sweep", str(tmp_path / "study.yaml"), "--dry-run", "--executor", "ray", "--max-concurrent", "2")
    assert result.output.splitlines()[-1] == (
        "executor ray (local instance): 1 GPU(s) and 1 CPU(s) per point, at most 2 at once, gpu_exclusive"
    )


def test_the_local_executor_never_imports_ray():
    code = textwrap.dedent("""
        import sys
        import llem_mlflow.cli
        from llem_mlflow.sweep.execute import make_executor
        from llem_mlflow.sweep.study import parse_study_text
        study = parse_study_text(open(sys.argv[1]).read(), "s.yaml")
        with make_executor(study, print, True) as executor:
            assert executor.name == "local"
        assert "ray" not in sys.modules, "ray was imported"
    """)
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as study:
        study.write(STUDY)
        study.flush()
        result = subprocess.run([sys.executable, "-c", code, study.name], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- the child's environment ------------------------------------------------------------------


def test_child_env_drops_the_parent_run_and_orders_gpus_by_pci_bus():
    env = child_env({"MLFLOW_RUN_ID": "p", "MLFLOW_EXPERIMENT_ID": "1", "PATH": "/bin"})
    # PCI order, and the point's process stops (its run KILLED) if the sweep or Ray task that started it dies
    assert env == {"PATH": "/bin", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "LLEM_STOP_WITH_PARENT": "1"}
    assert child_env({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"  # the user's choice
    forced = child_env({"CUDA_DEVICE_ORDER": "FASTEST_FIRST", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
                       {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2"})  # fmt: skip
    assert forced["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and forced["CUDA_VISIBLE_DEVICES"] == "2"  # what Ray gave the task


# --- placement ------------------------------------------------------------------------------


def test_gpu_ids_resolve_to_uuids_through_nvml():
    gpus = [FakeGpu(uuid=f"GPU-{i}aaaaaaa-0000-0000-0000-000000000000") for i in range(4)]
    assert gpu_uuids("1,3", FakeNvml(gpus)) == f"{gpus[1].uuid},{gpus[3].uuid}"
    assert gpu_uuids("GPU-2a", FakeNvml(gpus)) == gpus[2].uuid  # CUDA accepts a unique UUID prefix
    assert gpu_uuids("7", FakeNvml(gpus)) == "unavailable: CUDA_VISIBLE_DEVICES names GPU 7 but NVML sees 4 GPU(s)"
    assert gpu_uuids("0", FakeNvml(gpus, init_error=12)).startswith("unavailable: NVML cannot start")


def test_task_placement_tags_leave_out_gpus_for_a_point_without_any():
    with_gpu = TaskPlacement("n1", "10.0.0.1", "gpu-a", "t1", "0,1", "GPU-a,GPU-b").tags()
    assert with_gpu == {
        "llem.ray.node_id": "n1", "llem.ray.node_ip": "10.0.0.1", "llem.ray.hostname": "gpu-a",
        "llem.ray.task_id": "t1", "llem.ray.gpu_ids": "0,1", "llem.ray.gpu_uuids": "GPU-a,GPU-b",
    }  # fmt: skip
    assert "llem.ray.gpu_ids" not in TaskPlacement("n1", "10.0.0.1", "gpu-a", "t1", None, None).tags()


def test_points_that_overlap_on_one_node_share_its_host():
    spans = [
        Span("a", "node1", 0.0, 10.0),
        Span("b", "node1", 5.0, 15.0),  # overlaps a on node1
        Span("c", "node2", 0.0, 10.0),  # same time, other node
        Span("d", "node1", 15.0, 20.0),  # starts as b ends: no overlap
    ]
    assert host_sharing(spans) == {"a": ["b"], "b": ["a"], "c": [], "d": []}
    assert host_tags([]) == {"llem.energy.host_shared": "false"}
    shared = host_tags(["b"])
    assert shared["llem.energy.host_shared"] == "true" and "runs b" in shared["llem.warning.shared_host"]
    assert peak_concurrency(spans) == 3  # a, b and c at t=5..10
    assert peak_concurrency([]) == 0


def test_slots_count_whole_points_per_node():
    nodes = [{"CPU": 2.0, "GPU": 4.0, "llem_node": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert point_slots(nodes, {"CPU": 1.0, "GPU": 1.0}) == 2 + 1
    assert point_slots(nodes, {"CPU": 0.5, "GPU": 2.0}) == 2 + 0
    assert point_slots(nodes, {"CPU": 1.0, "GPU": 1.0, "llem_node": 1.0}) == 1  # node_exclusive: one per node that offers it
    assert point_slots(nodes, {"CPU": 0.1, "GPU": 0.0}) == 20 + 80  # 2 / 0.1 is 19.999...: still 20
