"""The Ray executor against a real local Ray cluster (2 CPUs, 4 fake GPUs, loopback only; tests/ray_cluster.py).

Each point is a real `llem-mlflow run` child process of random:tiny, launched
inside a Ray task; the runs land in a real sqlite store. Ray's GPUs are only
scheduler numbers here, but it reserves them per task and sets
CUDA_VISIBLE_DEVICES exactly as on a GPU node. The studies are run once per
module and the tests read what they left in MLflow.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import artifact_json

from llem_mlflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": "random:tiny",
    "max_output_tokens": 2,
    "dataset": {"n": 1},
    "warmup": {"enabled": False},
    "baseline": {"enabled": False},
    "energy": {"codecarbon": False},
}


def make_study(name: str, execution: dict, **parts):
    from llem_mlflow.sweep.study import build_study

    return build_study({"name": name, "base": TINY, "execution": {"executor": "ray", **execution}, **parts}, source=f"{name}.yaml")


def study_runs(client, experiment_id):
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("llem.sweep.role") == "parent"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


def overlapping(a, b) -> bool:
    return a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time


@pytest.fixture(scope="module")
def six_points(ray_cluster, module_store):
    """6 points, 1 GPU each, at most 2 at once (the cluster would fit 4: 4 GPUs, 0.5 CPU per point)."""
    from mlflow import MlflowClient

    from llem_mlflow.sweep.execute import run_study

    study = make_study(
        "six",
        {"gpus_per_point": 1, "cpus_per_point": 0.5, "max_concurrent": 2},
        sweep={"max_output_tokens": [1, 2, 3], "pytorch.batch_size": [1, 2]},
    )
    lines: list[str] = []
    result = run_study(study, experiment_name="ray-six", echo=lines.append, quiet=True)
    return MlflowClient(), study, result, lines


def test_the_cluster_listens_on_loopback_only(ray_cluster):
    import psutil

    listening = []
    for process in psutil.Process().children(recursive=True):
        try:
            listening += [(process.name(), c.laddr) for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    assert listening, "found no Ray server to check"
    exposed = [(name, addr) for name, addr in listening if not ipaddress.ip_address(addr.ip.removeprefix("::ffff:")).is_loopback]
    assert exposed == []


@pytest.mark.slow  # runs real points: the quick selection keeps the guards only
def test_six_points_give_one_parent_and_six_finished_children(six_points):
    client, study, result, lines = six_points
    assert result.complete and len(result.runs) == 6
    parents, kids = study_runs(client, result.experiment_id)
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(kids) == 6 and {k.info.status for k in kids} == {"FINISHED"}
    assert all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    assert sorted((k.data.params["max_output_tokens"], k.data.params["pytorch.batch_size"]) for k in kids) == [
        (t, b) for t in ("1", "2", "3") for b in ("1", "2")
    ]
    tags = parent.data.tags
    assert tags["llem.sweep.executor"] == "ray" and tags["llem.sweep.max_concurrent"] == "2"
    assert tags["llem.sweep.gpus_per_point"] == "1" and tags["llem.sweep.placement"] == "gpu_exclusive"
    assert parent.data.metrics["sweep/slots"] == 2  # min(max_concurrent 2, 4 points the cluster fits)
    assert 1 <= parent.data.metrics["sweep/peak_concurrency"] <= 2
    resources = artifact_json(parent.info.run_id, "sweep/cluster_resources.json")
    assert resources["cluster_resources"]["GPU"] == 4 and resources["cluster_resources"]["CPU"] == 2
    assert [n["ip"] for n in resources["nodes"]] == ["127.0.0.1"]
    assert sum("submitted" in line for line in lines) == 6


@pytest.mark.slow  # runs real points: the quick selection keeps the guards only
def test_each_child_is_tagged_with_its_node_task_and_gpu(six_points):
    client, _, result, _ = six_points
    _, kids = study_runs(client, result.experiment_id)
    for kid in kids:
        tags = kid.data.tags
        assert tags["llem.sweep.executor"] == "ray"
        assert tags["llem.ray.node_ip"] == "127.0.0.1" and tags["llem.ray.node_id"] and tags["llem.ray.hostname"]
        assert tags["llem.ray.gpu_ids"] in {"0", "1", "2", "3"}  # one whole GPU, as Ray set CUDA_VISIBLE_DEVICES
        assert tags["llem.ray.gpu_uuids"].startswith("unavailable: ")  # no NVML on this machine: said, not made up
    assert len({k.data.tags["llem.ray.task_id"] for k in kids}) == 6


@pytest.mark.slow  # runs real points: the quick selection keeps the guards only
def test_children_that_overlapped_never_shared_a_gpu_and_are_flagged_as_sharing_the_host(six_points):
    client, _, result, _ = six_points
    _, kids = study_runs(client, result.experiment_id)
    pairs = [(a, b) for i, a in enumerate(kids) for b in kids[i + 1 :] if overlapping(a, b)]
    assert pairs, "no two points ran at the same time: max_concurrent 2 was not used"
    for a, b in pairs:
        assert a.data.tags["llem.ray.gpu_ids"] != b.data.tags["llem.ray.gpu_ids"], (a.info.run_name, b.info.run_name)
    for run in {r.info.run_id: r for pair in pairs for r in pair}.values():
        # one node: points that overlapped shared its CPU/RAM meters
        assert run.data.tags["llem.energy.host_shared"] == "true"
        assert "ran on this node at the same time" in run.data.tags["llem.warning.shared_host"]
    at_once = max(sum(overlapping(a, b) for b in kids if b is not a) + 1 for a in kids)
    assert at_once <= 2  # never more than max_concurrent


@pytest.mark.slow  # runs real points: the quick selection keeps the guards only
def test_running_the_study_again_runs_nothing(six_points):
    from llem_mlflow.sweep.execute import run_study

    client, study, first, _ = six_points
    lines: list[str] = []
    again = run_study(study, experiment_name="ray-six", echo=lines.append, quiet=True)
    assert again.runs == [] and again.complete
    assert again.parent_run_id == first.parent_run_id
    assert "0 run(s) to go, 6 already finished" in "\n".join(lines)
    _, kids = study_runs(client, first.experiment_id)
    assert len(kids) == 6


@pytest.mark.slow  # runs real points: the quick selection keeps the guards only
def test_two_gpu_point_gets_two_ids_and_a_failing_point_fails_while_the_other_finishes(ray_cluster, module_store, tmp_path):
    from mlflow import MlflowClient

    from llem_mlflow.sweep.execute import run_study

    study = make_study(
        "two-gpus",
        {"gpus_per_point": 2},
        experiments=[{"name": "fine"}, {"name": "missing-prompts", "dataset.source": str(tmp_path / "absent.jsonl")}],
    )
    result = run_study(study, experiment_name="ray-two-gpus", echo=lambda s: None, quiet=True)
    assert not result.complete
    client = MlflowClient()
    parents, kids = study_runs(client, result.experiment_id)
    assert parents[0].info.status == "FAILED" and "llem.sweep.incomplete" in parents[0].data.tags
    by_name = {k.info.run_name: k for k in kids}
    fine, failed = by_name["fine"], by_name["missing-prompts"]
    assert fine.info.status == "FINISHED"
    ids = fine.data.tags["llem.ray.gpu_ids"].split(",")
    assert len(ids) == 2 and len(set(ids)) == 2 and set(ids) <= {"0", "1", "2", "3"}
    assert failed.info.status == "FAILED"
    assert "file not found" in failed.data.tags["llem.sweep.failure_reason"]
    assert failed.data.tags["llem.sweep.exit_code"] == "2"
    assert len(failed.data.tags["llem.ray.gpu_ids"].split(",")) == 2  # it ran, on its GPUs, and failed there


def test_a_point_the_cluster_cannot_fit_is_refused_before_any_run(ray_cluster, module_store):
    from mlflow import MlflowClient

    from llem_mlflow.sweep.execute import run_study

    client = MlflowClient()
    experiment_id = client.create_experiment("ray-too-big")
    with pytest.raises(ConfigError) as error:
        run_study(make_study("too-big", {"gpus_per_point": 8}, sweep={"max_output_tokens": [1, 2]}), experiment_id=experiment_id, echo=lambda s: None)
    assert "no node of the Ray cluster can run a point: a point needs 1 CPU, 8 GPU; the nodes offer: 2 CPU, 4 GPU" in str(error.value)
    assert client.search_runs([experiment_id]) == []


@pytest.mark.slow  # runs real points: the quick selection keeps the guards only
def test_a_task_whose_worker_died_gives_a_failed_child_with_the_reason(ray_cluster, module_store):
    """A worker that dies mid-task (here: os._exit in a real Ray task) loses the task's result; the child
    run its point had created is found by name and marked FAILED with Ray's reason."""
    import ray
    from mlflow import MlflowClient

    from llem_mlflow.sweep.execute import StudyRun, open_parent
    from llem_mlflow.sweep.execution import Execution
    from llem_mlflow.sweep.ray_executor import RayExecutor

    client = MlflowClient()
    study = make_study("worker-dies", {}, sweep={"max_output_tokens": [1, 2]})
    parent, experiment_id = open_parent(client, study, "ray-worker-dies", None, echo=lambda s: None)
    sweep = StudyRun(client, study, parent, experiment_id)
    started = int(time.time() * 1000)
    orphan = client.create_run(experiment_id, run_name=sweep.run_name(study.points[0], 1),
                               tags={"mlflow.parentRunId": parent}).info.run_id  # fmt: skip

    crash = ray.remote(lambda: os._exit(1)).options(num_cpus=0.1, max_retries=0)
    executor = RayExecutor(Execution("ray"), echo=lambda s: None, quiet=True)
    outcomes = [executor._collect(ray, crash.remote(), sweep, point, 1, started - 1000)[0] for point in study.points]

    assert outcomes[0].run_id == orphan  # the run the dead point had created
    assert outcomes[1].run_id != orphan  # this point never created one: a FAILED child stands for it
    for outcome in outcomes:
        run = client.get_run(outcome.run_id)
        assert outcome.status == run.info.status == "FAILED"
        assert run.data.tags["llem.sweep.failure_reason"].startswith("the Ray task failed: WorkerCrashedError")
        assert "llem.sweep.exit_code" not in run.data.tags  # no process exit code is known
        assert run.data.tags["llem.sweep.executor"] == "ray" and run.data.tags["mlflow.parentRunId"] == parent


def test_node_exclusive_placement_fits_one_point_per_node(ray_cluster):
    import ray

    from llem_mlflow.sweep.execution import Execution
    from llem_mlflow.sweep.ray_cluster import describe_cluster, point_request

    exclusive = Execution("ray", gpus_per_point=1, placement="node_exclusive")
    assert point_request(exclusive) == {"CPU": 1.0, "GPU": 1.0, "llem_node": 1.0}
    assert describe_cluster(ray, exclusive, started_here=False).slots == 1  # one node offers llem_node once
    assert describe_cluster(ray, Execution("ray", gpus_per_point=1), started_here=False).slots == 2  # 2 CPUs


# --- through the command line, as a separate driver process -----------------------------------


def _env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def write_study(path: Path, **parts) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "base": TINY, **parts}))
    return path


@pytest.mark.slow
def test_mlflow_run_sweep_entry_point_on_ray_with_a_tracking_server(ray_cluster, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"ray-mlflow-run-{time.monotonic_ns()}")
    study = write_study(tmp_path / "study.yaml", sweep={"max_output_tokens": [1, 2]})
    command = [
        sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", "sweep",
        "--experiment-id", experiment_id, "-P", f"config={study}", "-P", "executor=ray",
        "-P", f"ray_address={ray_cluster}", "-P", "max_concurrent=2",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=_env(mlflow_server), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    parents, kids = study_runs(client, experiment_id)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["executor"] == "ray"  # mlflow run's own params
    assert "" not in parents[0].data.params.values()  # nothing left out is logged as an empty param
    assert parents[0].data.tags["llem.sweep.ray_address"] == ray_cluster
    assert len(kids) == 2 and {k.info.status for k in kids} == {"FINISHED"}
    assert all(k.data.tags["llem.ray.gpu_ids"] in {"0", "1", "2", "3"} for k in kids)
    assert json.loads(parents[0].data.params["sweep.max_output_tokens"]) == [1, 2]


@pytest.mark.slow
def test_ctrl_c_cancels_pending_points_and_marks_running_ones_killed(ray_cluster, mlflow_store, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment_id = client.create_experiment("ray-ctrl-c")
    study = write_study(tmp_path / "study.yaml", sweep={"max_output_tokens": [1, 2, 3, 4]})
    command = [sys.executable, "-m", "llem_mlflow", "sweep", str(study), "--experiment-id", experiment_id,
               "--executor", "ray", "--ray-address", ray_cluster, "--max-concurrent", "1", "--quiet"]  # fmt: skip
    # A new process group with the default SIGINT handler: Ctrl-C reaches the driver as in a terminal.
    process = subprocess.Popen(command, env=_env(mlflow_store), cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            _, kids = study_runs(client, experiment_id)
            if any(k.info.status == "RUNNING" for k in kids):
                break
            time.sleep(0.5)
        assert process.poll() is None, process.communicate()[0]
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, output
    parents, kids = study_runs(client, experiment_id)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert len(kids) == 1, [(k.info.run_name, k.info.status) for k in kids]  # the 3 pending points never started
    assert kids[0].info.status == "KILLED"
    assert kids[0].data.tags["llem.sweep.failure_reason"] == "interrupted: the study was stopped (Ctrl-C)"
    assert "RUNNING" not in {r.info.status for r in client.search_runs([experiment_id])}
