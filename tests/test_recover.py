"""Dead runs: the heartbeat, `llem-mlflow recover`, and what a run killed with kill -9 keeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import LONG_RUN_PROMPTS, artifact_paths, artifact_text, invoke_cli, llem, only_run, wait_for_measuring, write_config
from mlflow import MlflowClient

from llem_mlflow.config.loader import load_config
from llem_mlflow.config.params import config_to_params
from llem_mlflow.tracking.heartbeat import HEARTBEAT_TAG, INTERVAL_TAG, PROCESS_TAG, now_iso, parse_iso_ms
from llem_mlflow.tracking.run import RunLogger


def _running_run(client, experiment_id: str, beat_age_s: float, identity: str | None, interval_s: float = 30) -> str:
    """A RUNNING run as a llem-mlflow process leaves it: heartbeat `beat_age_s` old, its process identity."""
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "model", "random:tiny")
    tags = {HEARTBEAT_TAG: now_iso(time.time() - beat_age_s), INTERVAL_TAG: str(interval_s)}
    if identity:
        tags[PROCESS_TAG] = identity
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return run_id


ELSEWHERE = "host=another-machine boot=0 pidns=pid:[1] pid=4242 started=1.00"


def test_recover_marks_only_the_dead_runs(mlflow_store):
    client = MlflowClient()
    experiment = client.create_experiment("recover")
    stale = _running_run(client, experiment, beat_age_s=3600, identity=ELSEWHERE)  # silent for an hour
    fresh = _running_run(client, experiment, beat_age_s=5, identity=ELSEWHERE)  # beat 5 s ago: may be alive
    not_ours = client.create_run(experiment).info.run_id  # no heartbeat: never judged
    with_gone_process = _running_run(client, experiment, beat_age_s=1, identity=_identity_of_a_finished_process())

    dry = invoke_cli("recover", "--experiment", "recover", "--dry-run")
    assert "2 dead run(s) found (dry run" in dry.output
    assert client.get_run(stale).info.status == "RUNNING"

    result = invoke_cli("recover", "--experiment", "recover")
    assert "2 dead run(s) marked FAILED" in result.output
    status = {run_id: client.get_run(run_id).info.status for run_id in (stale, fresh, not_ours, with_gone_process)}
    assert status == {stale: "FAILED", fresh: "RUNNING", not_ours: "RUNNING", with_gone_process: "FAILED"}
    dead = client.get_run(stale)
    assert dead.data.tags["llem.error"].startswith("process died: no heartbeat for")
    assert "llem-mlflow recover" in dead.data.tags["llem.recovered"]
    assert dead.data.params == {"model": "random:tiny"}  # what it logged stays
    assert dead.info.end_time == parse_iso_ms(dead.data.tags[HEARTBEAT_TAG])  # ended when last seen alive
    assert "process died" in artifact_text(stale, "error.txt")
    assert "no longer exists" in client.get_run(with_gone_process).data.tags["llem.error"]

    # A longer --stale-after spares a run silent for less; never less than 3 of its beats.
    hour_old = _running_run(client, experiment, beat_age_s=3600, identity=ELSEWHERE, interval_s=3600)
    assert "0 dead run(s)" in invoke_cli("recover", "--experiment", experiment, "--stale-after", "1").output
    assert client.get_run(hour_old).info.status == "RUNNING"


def _identity_of_a_finished_process() -> str:
    from llem_mlflow.tracking.heartbeat import process_identity

    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        identity = process_identity(process.pid)
    finally:
        process.kill()
        process.wait()
    return identity


def test_a_live_run_beats_and_is_never_recovered(mlflow_store, monkeypatch):
    monkeypatch.setenv("LLEM_HEARTBEAT_S", "0.2")
    logger = RunLogger.start(experiment_name="alive")
    try:
        client = MlflowClient()
        first = client.get_run(logger.run_id).data.tags[HEARTBEAT_TAG]
        time.sleep(1.5)
        assert parse_iso_ms(client.get_run(logger.run_id).data.tags[HEARTBEAT_TAG]) > parse_iso_ms(first)
        assert f"pid={os.getpid()}" in client.get_run(logger.run_id).data.tags[PROCESS_TAG]
        assert "0 dead run(s)" in invoke_cli("recover", "--stale-after", "0.1").output
        assert client.get_run(logger.run_id).info.status == "RUNNING"
    finally:
        logger.end("FINISHED")
    beat_at_end = client.get_run(logger.run_id).data.tags[HEARTBEAT_TAG]
    time.sleep(0.6)
    assert client.get_run(logger.run_id).data.tags[HEARTBEAT_TAG] == beat_at_end  # the beat stops with the run


def test_a_bad_heartbeat_period_is_refused_before_a_run_exists(mlflow_store, tmp_path, monkeypatch, capsys):
    from llem_mlflow.launch import EXIT_BAD_INPUT, launch

    monkeypatch.setenv("LLEM_HEARTBEAT_S", "often")
    assert launch(str(write_config(tmp_path / "exp.yaml")), quiet=True) == EXIT_BAD_INPUT
    assert "LLEM_HEARTBEAT_S='often'" in capsys.readouterr().err
    assert MlflowClient().search_runs(["0"]) == []


@pytest.mark.slow
def test_kill_9_mid_measure_then_recover_gives_failed_with_the_logged_data_kept(mlflow_store, tmp_path):
    """Both of the run's processes (the measuring one and its MLflow reporter) die at once, as when the
    OOM killer or a scheduler kills the job's whole process group or cgroup: nobody can end the run."""
    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": LONG_RUN_PROMPTS}, pytorch={"batch_size": 1})
    process = subprocess.Popen(
        [sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--quiet"], start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LLEM_HEARTBEAT_S": "1"},
    )  # fmt: skip
    try:
        wait_for_measuring(process)
        os.killpg(process.pid, signal.SIGKILL)  # no handler runs, in either process
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        time.sleep(1)  # the reporter process, killed too, is reaped by init
    assert only_run().info.status == "RUNNING"  # nobody could end it

    result = llem("recover")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 dead run(s) marked FAILED" in result.stdout
    run = only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["llem.error"].startswith("process died: its process (pid")
    assert run.data.tags["llem.status"] == "failed"
    for key, value in config_to_params(load_config(cfg)).items():  # what it logged stays
        assert run.data.params[key] == value, key
    assert run.data.tags["llem.device.type"] == "cpu"
    assert {"config/experiment.yaml", "error.txt"} <= set(artifact_paths(run.info.run_id))
