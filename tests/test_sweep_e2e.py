"""End to end: real studies over random:tiny, each point a real `llem-mlflow run` child process.

Slow (a model load per point), so every point is as small as an experiment gets.
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_BASE = {
    "model": "random:tiny",
    "max_output_tokens": 4,
    "dataset": {"n": 2},
    "warmup": {"enabled": False},
    "baseline": {"enabled": False},
    "energy": {"codecarbon": False},
}

pytestmark = pytest.mark.slow


def _commands_work() -> bool:
    for command in ("run", "sweep"):
        result = subprocess.run([sys.executable, "-m", "llem_mlflow", command, "--help"], capture_output=True, cwd=REPO)
        if result.returncode != 0:
            return False
    return True


requires_run = pytest.mark.skipif(not _commands_work(), reason="`llem-mlflow run` or `sweep` is not registered yet")


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    """A sqlite store and an experiment whose artifacts live in tmp_path; env for the subprocesses."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)  # the default experiment's artifact root is ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    client = MlflowClient()
    experiment_id = client.create_experiment("sweeps", artifact_location=(tmp_path / "artifacts").as_uri())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    return client, experiment_id, env


def write_study(tmp_path: Path, **study) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "e2e", "base": TINY_BASE, **study}))
    return path


def sweep_cli(study: Path, experiment_id: str, env: dict, cwd: Path, **kw) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "llem_mlflow", "sweep", str(study), "--experiment-id", experiment_id, "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=900, **kw)


def study_runs(client, experiment_id):
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("llem.sweep.role") == "parent"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


@requires_run
def test_mlflow_run_sweep_gives_one_parent_and_a_finished_child_per_point(tmp_path, tracking):
    client, experiment_id, env = tracking
    study = write_study(
        tmp_path,
        sweep={"pytorch.batch_size": [1, 2], "random_seed": [1, 2]},
        experiments=[{"name": "too-long", "decoder.min_new_tokens": 99}],
    )
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", "sweep",
         "--experiment-id", experiment_id, "-P", f"config={study}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "skip  too-long: decoder.min_new_tokens (99) exceeds max_output_tokens (4)" in output
    assert output.index("skip  too-long") < output.index("[1/4]")  # the plan comes before any run

    parents, kids = study_runs(client, experiment_id)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "e2e"  # the study's name, not the random one `mlflow run` gave it
    assert parent.data.params["config"] == str(study)  # mlflow run's own param is untouched
    assert json.loads(parent.data.params["sweep.pytorch.batch_size"]) == [1, 2]
    assert "exceeds max_output_tokens" in parent.data.tags["llem.sweep.skipped.too-long"]
    assert len(kids) == 4 and all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    assert {k.info.status for k in kids} == {"FINISHED"}
    grid = sorted((k.data.params["pytorch.batch_size"], k.data.params["random_seed"]) for k in kids)
    assert grid == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    for kid in kids:
        assert kid.data.params["max_output_tokens"] == "4"
        assert kid.info.run_name == f"batch_size={kid.data.params['pytorch.batch_size']},random_seed={kid.data.params['random_seed']}"
        assert kid.data.metrics["throughput/output_tokens_per_s"] > 0
    assert len({k.data.tags["llem.config_hash"] for k in kids}) == 4
    best = parent.data.tags["llem.sweep.best.throughput/output_tokens_per_s"]
    assert best in {k.info.run_name for k in kids}
    summary = Path(client.download_artifacts(parent.info.run_id, "sweep/summary.csv", str(tmp_path))).read_text()
    assert len(summary.strip().splitlines()) == 5


@requires_run
def test_a_failing_point_is_recorded_and_a_rerun_retries_only_it(tmp_path, tracking):
    client, experiment_id, env = tracking
    prompts = tmp_path / "prompts.jsonl"  # missing on the first run: that point fails with a DatasetError
    study = write_study(tmp_path, experiments=[{"name": "builtin"}, {"name": "from-file", "dataset.source": str(prompts)}])

    first = sweep_cli(study, experiment_id, env, tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "from-file: FAILED" in first.stdout and "file not found" in first.stdout
    parents, kids = study_runs(client, experiment_id)
    assert [p.info.status for p in parents] == ["FAILED"]
    by_name = {k.info.run_name: k for k in kids}
    assert by_name["builtin"].info.status == "FINISHED"
    assert by_name["from-file"].info.status == "FAILED"
    assert "file not found" in by_name["from-file"].data.tags["llem.sweep.failure_reason"]

    prompts.write_text('{"prompt": "Hello there"}\n{"prompt": "Count to three"}\n')
    second = sweep_cli(study, experiment_id, env, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 run(s) to go, 1 already finished" in second.stdout
    parents, kids = study_runs(client, experiment_id)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    statuses = sorted((k.info.run_name, k.info.status) for k in kids)
    assert statuses == [("builtin", "FINISHED"), ("from-file", "FAILED"), ("from-file", "FINISHED")]


@requires_run
def test_a_killed_study_resumed_runs_only_the_missing_points(tmp_path, tracking):
    client, experiment_id, env = tracking
    study = write_study(tmp_path, sweep={"random_seed": [1, 2]})
    command = [sys.executable, "-m", "llem_mlflow", "sweep", str(study), "--experiment-id", experiment_id, "--quiet"]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            _, kids = study_runs(client, experiment_id)
            statuses = {k.info.status for k in kids}
            if {"FINISHED", "RUNNING"} <= statuses:  # one point done, the next one under way
                break
            time.sleep(0.5)
        assert process.poll() is None, "the study ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and its running child, as a crash would
        process.wait()

    parents, kids = study_runs(client, experiment_id)
    assert [p.info.status for p in parents] == ["RUNNING"]  # killed: nobody ended it
    finished_before = {k.data.tags["llem.config_hash"] for k in kids if k.info.status == "FINISHED"}
    assert len(finished_before) == 1
    dead = [k.info.run_id for k in kids if k.info.status == "RUNNING"]  # the child killed with the sweep
    assert len(dead) == 1

    resumed = sweep_cli(study, experiment_id, env, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    missing = 1
    assert f"{missing} run(s) to go, {len(finished_before)} already finished" in resumed.stdout
    parents_after, kids_after = study_runs(client, experiment_id)
    assert [p.info.run_id for p in parents_after] == [parents[0].info.run_id]
    assert parents_after[0].info.status == "FINISHED"
    finished = [k for k in kids_after if k.info.status == "FINISHED"]
    assert len(finished) == 2  # no finished point ran twice
    assert sorted(k.data.params["random_seed"] for k in finished) == ["1", "2"]
    # The child that died with the first session is marked so on resume, and is no result in the summary.
    for run_id in dead:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["llem.sweep.failure_reason"].startswith("process died")
    summary = Path(client.download_artifacts(parents[0].info.run_id, "sweep/summary.csv", str(tmp_path))).read_text()
    rows = {row["run_id"]: row for row in csv.DictReader(io.StringIO(summary))}
    for run_id in dead:
        assert f"child run {run_id}" in resumed.stdout
        assert rows[run_id]["status"] == "FAILED"
        assert not any(value for key, value in rows[run_id].items() if "/" in key)  # no figures: not a result
