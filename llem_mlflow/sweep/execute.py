"""Run a study: one parent MLflow run, one child run per (point, repeat).

Each child is a full experiment in a fresh `python -m llem_mlflow run`
process, so GPU memory, compiled graphs and library state start clean, and a
crash in one point cannot take the study down. A child that fails records its
own reason (the run command ends its run FAILED); a child that died before it
could is marked FAILED here.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llem_mlflow.sweep.resume import (
    CONFIG_HASH_TAG,
    PARENT_TAG,
    POINT_TAG,
    REPEAT_TAG,
    ROLE_TAG,
    STUDY_HASH_TAG,
    adopt_children,
    children,
    earlier_parents,
    finished_counts,
)
from llem_mlflow.lifeline import STOP_WITH_PARENT_ENV
from llem_mlflow.sweep.study import Point, Study
from llem_mlflow.tracking.heartbeat import Heartbeat, dead_reason
from llem_mlflow.tracking.recover import DeadRun, mark_dead
from llem_mlflow.tracking.run import RunLogger

RUN_ID_LINE = re.compile(r"run_id:\s*([0-9a-f]{32})\b")
FAILURE_TAG = "llem.sweep.failure_reason"
EXIT_CODE_TAG = "llem.sweep.exit_code"
# Environment a child must not inherit: under `mlflow run` MLFLOW_RUN_ID names the parent,
# and a child that saw it would resume the parent instead of creating its own run.
PARENT_ONLY_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


@dataclass(frozen=True)
class PointRun:
    point: Point
    repeat: int
    run_id: str
    status: str  # FINISHED, FAILED or KILLED
    reason: str | None


@dataclass(frozen=True)
class StudyRun:
    """Where the children of one study go: the store, the study, its parent run and experiment."""

    client: Any
    study: Study
    parent_id: str
    experiment_id: str

    def run_name(self, point: Point, repeat: int) -> str:
        return point.name if self.study.repeats == 1 else f"{point.name} #{repeat}"


@dataclass(frozen=True)
class StudyResult:
    parent_run_id: str
    experiment_id: str
    runs: list[PointRun]
    complete: bool  # every point has `repeats` FINISHED children


def run_study(
    study: Study,
    experiment_name: str | None = None,
    experiment_id: str | None = None,
    echo: Callable[[str], None] = print,
    quiet: bool = False,
) -> StudyResult:
    """Run the points of the study that have not finished yet, then summarise it on the parent."""
    from llem_mlflow.tracking.store import open_client

    client = open_client()
    parent_id, experiment_id = open_parent(client, study, experiment_name, experiment_id, echo)
    heartbeat = Heartbeat(client, parent_id).start()  # a dead sweep's parent and children are told apart
    try:
        return _run_todo(client, study, parent_id, experiment_id, echo, quiet, heartbeat)
    finally:
        heartbeat.stop()


def _run_todo(
    client: Any, study: Study, parent_id: str, experiment_id: str, echo: Callable[[str], None], quiet: bool, heartbeat: Any
) -> StudyResult:
    from llem_mlflow.sweep.summary import summarise

    mark_dead_children(client, study, experiment_id, echo)
    done = finished_counts(client, experiment_id, parent_id)
    todo = study.schedule(done)
    skipped_done = sum(min(done.get(p.config_hash, 0), study.repeats) for p in study.points)
    echo(f"parent run {parent_id} (experiment {experiment_id}): {len(todo)} run(s) to go, {skipped_done} already finished")

    sweep = StudyRun(client, study, parent_id, experiment_id)
    runs: list[PointRun] = []
    with tempfile.TemporaryDirectory(prefix="llem-sweep-") as workdir:
        try:
            for i, (point, repeat) in enumerate(todo, start=1):
                label = sweep.run_name(point, repeat)
                echo(f"[{i}/{len(todo)}] {label}")
                result = run_point(sweep, point, repeat, Path(workdir), echo, quiet)
                runs.append(result)
                echo(f"[{i}/{len(todo)}] {label}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        except KeyboardInterrupt:
            heartbeat.stop()
            _end_parent(client, parent_id, "KILLED")
            raise
        except BaseException:
            heartbeat.stop()
            _end_parent(client, parent_id, "FAILED")  # never leave the parent RUNNING
            raise
    try:
        summarise(client, study, parent_id, experiment_id, echo)
        counts = finished_counts(client, experiment_id, parent_id)
    except BaseException:
        heartbeat.stop()
        _end_parent(client, parent_id, "FAILED")
        raise
    complete = all(counts.get(p.config_hash, 0) >= study.repeats for p in study.points)
    if not complete:
        client.set_tag(parent_id, "llem.sweep.incomplete", "some points have no FINISHED run; run the study again to retry them")
    heartbeat.stop()
    _end_parent(client, parent_id, "FINISHED" if complete else "FAILED")
    return StudyResult(parent_id, experiment_id, runs, complete)


def mark_dead_children(client: Any, study: Study, experiment_id: str, echo: Callable[[str], None]) -> int:
    """On resume: children of this study's parents left RUNNING by a session that died (its process is
    gone, or its heartbeat stale) are marked FAILED "process died", so they count as what they are."""
    marked = 0
    for parent in earlier_parents(client, experiment_id, study.study_hash):
        for run in children(client, experiment_id, parent.info.run_id, status="RUNNING"):
            reason = dead_reason(run)
            if reason is None:
                echo(f"child run {run.info.run_id} is RUNNING with a recent heartbeat: left as it is (another session?); "
                     "it is not in the summary")  # fmt: skip
                continue
            mark_dead(client, DeadRun(run, reason), by="llem-mlflow sweep (resume)")
            client.set_tag(run.info.run_id, FAILURE_TAG, reason[:5000])
            echo(f"child run {run.info.run_id} ({run.info.run_name}): {reason}; marked FAILED")
            marked += 1
    return marked


def open_parent(
    client: Any, study: Study, experiment_name: str | None, experiment_id: str | None, echo: Callable[[str], None]
) -> tuple[str, str]:
    """The study's parent run: the `mlflow run` run, an earlier parent of the same study, or a new one."""
    current = os.environ.get("MLFLOW_RUN_ID")
    if current:
        experiment_id = client.get_run(current).info.experiment_id
    else:
        experiment_id = resolve_experiment(client, experiment_name, experiment_id)
    earlier = earlier_parents(client, experiment_id, study.study_hash, exclude=current)
    if current:
        parent_id = current
    elif earlier:
        parent_id = earlier.pop(0).info.run_id
        client.update_run(parent_id, status="RUNNING")
        echo(f"resuming study {study.name!r} in parent run {parent_id}")
    else:
        parent_id = client.create_run(experiment_id, run_name=study.name).info.run_id
    for old in earlier:
        moved = adopt_children(client, experiment_id, old.info.run_id, parent_id)
        echo(f"resuming study {study.name!r}: {moved} finished run(s) moved from parent {old.info.run_id}")
    log_study(client, study, parent_id)
    return parent_id, experiment_id


def resolve_experiment(client: Any, name: str | None, experiment_id: str | None) -> str:
    """Experiment id from the options, then MLflow's environment variables, then the default experiment."""
    from llem_mlflow.errors import TrackingError

    experiment_id = experiment_id or (None if name else os.environ.get("MLFLOW_EXPERIMENT_ID"))
    name = name or (None if experiment_id else os.environ.get("MLFLOW_EXPERIMENT_NAME"))
    if experiment_id:
        if client.get_experiment(experiment_id) is None:
            raise TrackingError(f"experiment id {experiment_id} does not exist: check --experiment-id")
        return experiment_id
    if name:
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found else client.create_experiment(name)
    return "0"


def log_study(client: Any, study: Study, parent_id: str) -> None:
    """Tags and params that describe the study on its parent run (params only once: they cannot change)."""
    tags = {
        STUDY_HASH_TAG: study.study_hash,
        ROLE_TAG: "parent",
        "llem.sweep.name": study.name,
        "llem.sweep.cycle_order": study.cycle_order,
        "llem.sweep.repeats": str(study.repeats),
        "llem.sweep.n_points": str(len(study.points)),
        "llem.sweep.n_skipped": str(len(study.skipped)),
    }
    for skip in study.skipped:
        tags[f"llem.sweep.skipped.{_tag_safe(skip.name)}"] = skip.reason[:5000]
    existing = client.get_run(parent_id).data.params
    params = {f"sweep.{key}": json.dumps(values) for key, values in study.swept.items()}
    params["sweep.n_points"] = str(len(study.points))
    parent = RunLogger(client, parent_id)
    parent.log_params({k: v[:6000] for k, v in params.items() if k not in existing})
    parent.set_tags(tags)
    client.log_dict(parent_id, plan_dict(study), "sweep/plan.json")


def plan_dict(study: Study) -> dict[str, Any]:
    return {
        "name": study.name,
        "study_hash": study.study_hash,
        "cycle_order": study.cycle_order,
        "repeats": study.repeats,
        "swept": study.swept,
        "points": [{"name": p.name, "config_hash": p.config_hash, "overrides": p.overrides} for p in study.points],
        "skipped": [{"name": s.name, "overrides": s.overrides, "reason": s.reason} for s in study.skipped],
    }


def run_point(
    sweep: StudyRun, point: Point, repeat: int, workdir: Path, echo: Callable[[str], None], quiet: bool = False
) -> PointRun:
    """One child run in a fresh process; its outcome read back from MLflow."""
    from llem_mlflow.config.params import config_to_yaml

    config_path = workdir / f"point-{point.config_hash}-{repeat}.yaml"
    config_path.write_text(config_to_yaml(point.config), encoding="utf-8")
    command = [
        sys.executable, "-m", "llem_mlflow", "run", str(config_path),
        "--parent-run-id", sweep.parent_id,
        "--experiment-id", sweep.experiment_id,
        "--run-name", sweep.run_name(point, repeat),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in PARENT_ONLY_ENV}
    env[STOP_WITH_PARENT_ENV] = "1"  # the child stops (KILLED) if this sweep dies
    tail: collections.deque[str] = collections.deque(maxlen=20)
    run_id = None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            found = RUN_ID_LINE.search(line)
            run_id = run_id or (found.group(1) if found else None)
            if not quiet:
                echo(f"    {line}")
        exit_code = process.wait()
    except KeyboardInterrupt:
        _stop(process)  # the child saw the same Ctrl-C; give it time to end its run KILLED
        raise
    return record_outcome(sweep, point, repeat, run_id, exit_code, list(tail))


def record_outcome(
    sweep: StudyRun, point: Point, repeat: int, run_id: str | None, exit_code: int, tail: list[str]
) -> PointRun:
    """Read the child's status; mark it FAILED (creating the run if it never existed) when the child could not."""
    client = sweep.client
    reason = None if exit_code == 0 else failure_reason(exit_code, tail)
    status = client.get_run(run_id).info.status if run_id else None
    if exit_code == 0 and status != "FINISHED":
        reason = f"the run command exited 0 but its run is {status or 'missing (no run_id line)'}"
    if run_id is None:
        run_id = create_failed_child(sweep, point, repeat)
        status = "FAILED"
    elif status in ("RUNNING", "SCHEDULED") or (reason and status == "FINISHED"):
        client.set_terminated(run_id, status="FAILED")
        status = "FAILED"
    tags = {STUDY_HASH_TAG: sweep.study.study_hash, POINT_TAG: point.name, REPEAT_TAG: str(repeat), ROLE_TAG: "child"}
    if reason:
        tags[FAILURE_TAG] = reason[:5000]
        tags[EXIT_CODE_TAG] = str(exit_code)
    RunLogger(client, run_id).set_tags(tags)
    return PointRun(point, repeat, run_id, status, reason)


def failure_reason(exit_code: int, tail: list[str]) -> str:
    """The child's own error line when it printed one, else its last output."""
    errors = [line.strip() for line in tail if line.strip().startswith("Error:")]
    if errors:
        return errors[-1].removeprefix("Error:").strip()
    last = " | ".join(line.strip() for line in tail[-3:] if line.strip())
    return f"exit code {exit_code}" + (f": {last}" if last else " with no output")


def create_failed_child(sweep: StudyRun, point: Point, repeat: int) -> str:
    """A FAILED child for a process that died before creating its run, so the UI shows the point.

    record_outcome tags it with the failure reason (a run that never existed always has one).
    """
    from llem_mlflow.config.params import config_to_params

    run = sweep.client.create_run(
        sweep.experiment_id,
        run_name=sweep.run_name(point, repeat),
        tags={PARENT_TAG: sweep.parent_id, CONFIG_HASH_TAG: point.config_hash},
    )
    child = RunLogger(sweep.client, run.info.run_id)
    child.log_params(config_to_params(point.config))
    child.end("FAILED")
    return child.run_id


def _stop(process: subprocess.Popen) -> None:
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _end_parent(client: Any, parent_id: str, status: str) -> None:
    # Under `mlflow run` the launcher ends its own run from our exit code.
    if os.environ.get("MLFLOW_RUN_ID") != parent_id:
        client.set_terminated(parent_id, status=status)


def _tag_safe(name: str) -> str:
    return re.sub(r"[^\w.\-/ ]", "_", name)[:200]
