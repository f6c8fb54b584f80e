"""Stop with the parent (llem_mlflow/lifeline.py): SIGTERM to `mlflow run` ends the benchmark it
started KILLED with partial data, and no process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import LONG_RUN_PROMPTS, artifact_json, assert_failed_with, only_run, wait_for_measuring, write_config

# A parent that starts a child which asks to stop with it, prints the child's pid, then dies.
# The child records the signal it got in a file.
PARENT = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
    print(child.pid, flush=True)
    sys.stdin.readline()  # the test says when to die
""")
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from llem_mlflow import lifeline
    out = sys.argv[1]
    signal.signal(signal.SIGTERM, lambda *_: (open(out, "w").write("SIGTERM"), os._exit(0)))
    if sys.argv[2] == "watcher":
        lifeline._start_watcher(os.getppid(), signal.SIGTERM)
    else:
        assert lifeline.stop_with_parent() == "prctl"
    open(out + ".ready", "w").write("")
    time.sleep(120)
""")


@pytest.mark.parametrize("how", ["prctl", "watcher"])
def test_a_child_asking_to_stop_with_its_parent_gets_sigterm_when_it_dies(tmp_path, how):
    if how == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    out = tmp_path / "signal.txt"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(out), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        _wait_for(lambda: Path(f"{out}.ready").exists(), 60)
        assert not out.exists()  # alive while the parent is
        parent.kill()  # SIGKILL: the parent has no chance to clean up
        parent.wait()
        _wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 30)
        assert out.read_text() == "SIGTERM"
    finally:
        if child.is_running():
            child.kill()


@pytest.mark.slow
def test_sigterm_to_mlflow_run_ends_the_run_killed_and_leaves_no_process(mlflow_store, project_copy, tmp_path):
    """What a scheduler does to stop a job: SIGTERM to the `mlflow run` process only."""
    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": LONG_RUN_PROMPTS}, pytorch={"batch_size": 1}, energy={"codecarbon": True})
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        mlflow_run = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "run", str(project_copy), "--env-manager", "local", "-P", f"config={cfg}"],
            stdout=out, stderr=err,
        )  # fmt: skip
    descendants: list[psutil.Process] = []
    try:
        wait_for_measuring(mlflow_run)
        descendants = psutil.Process(mlflow_run.pid).children(recursive=True)
        assert any("llem_mlflow" in " ".join(p.cmdline()) for p in descendants), [p.cmdline() for p in descendants]
        time.sleep(3)  # some batches finish
        mlflow_run.send_signal(signal.SIGTERM)
        mlflow_run.wait(timeout=60)
        gone, alive = psutil.wait_procs(descendants, timeout=180)
        assert alive == [], [p.cmdline() for p in alive]  # nothing left running with parent 1
    finally:
        for process in [p for p in descendants if p.is_running()]:
            process.kill()
        if mlflow_run.poll() is None:
            mlflow_run.kill()

    run = only_run()
    assert_failed_with(run, "interrupted", status="KILLED")
    results = artifact_json(run.info.run_id, "results.json")
    assert results["status"] == "partial" and results["phase"] == "measure"
    assert 0 < results["requests_completed"] < LONG_RUN_PROMPTS
    assert run.data.metrics["time/warmup_s"] > 0
    assert artifact_json(run.info.run_id, "energy_phases.json")["load"]["cpu_j"] > 0


def _wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s")


def test_stopping_with_the_parent_is_asked_for_only_under_mlflow_run_or_a_sweep(monkeypatch):
    from llem_mlflow import lifeline

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv(lifeline.STOP_WITH_PARENT_ENV, raising=False)
    assert not lifeline.wanted()  # `nohup llem-mlflow run ... &` outlives its shell
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    assert lifeline.wanted()
    monkeypatch.delenv("MLFLOW_RUN_ID")
    monkeypatch.setenv(lifeline.STOP_WITH_PARENT_ENV, "1")
    assert lifeline.wanted()
    assert os.environ.get("MLFLOW_RUN_ID") is None
