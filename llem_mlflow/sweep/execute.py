"""Run a study: one parent MLflow run, one child run per (point, repeat).

Each child is a full experiment in a fresh `python -m llem_mlflow run`
process, so GPU memory, compiled graphs and library state start clean, and a
crash in one point cannot take the study down. A child that fails records its
own reason (the run command ends its run FAILED); a child that died before it
could is marked FAILED here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
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
from llem_mlflow.sweep.child import ChildSpec, child_env, run_child
from llem_mlflow.sweep.study import Point, Study
from llem_mlflow.tracking.heartbeat import Heartbeat, dead_reason
from llem_mlflow.tracking.recover import DeadRun, mark_dead
from llem_mlflow.tracking.naming import name_run_if_generated
from llem_mlflow.tracking.run import RunLogger

FAILURE_TAG = "llem.sweep.failure_reason"
EXIT_CODE_TAG = "llem.sweep.exit_code"
EXECUTOR_TAG = "llem.sweep.executor"


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
    """Run the points of the study that have not finished yet, then summarise it on the parent.

    The executor (study.execution) is ready before the parent exists: a Ray cluster that cannot run
    a point is refused without leaving a run behind.
    """
    from mlflow import get_tracking_uri

    from llem_mlflow.sweep.execution import check_tracking_reachable
    from llem_mlflow.tracking.store import open_client

    check_tracking_reachable(study.execution, get_tracking_uri(), os.environ.get("RAY_ADDRESS"))
    client = open_client()
    with make_executor(study, echo, quiet) as executor:
        parent_id, experiment_id = open_parent(client, study, experiment_name, experiment_id, echo)
        heartbeat = Heartbeat(client, parent_id).start()  # a dead sweep's parent and children are told apart
        try:
            return _run_todo(client, study, executor, parent_id, experiment_id, echo, quiet)
        finally:
            heartbeat.stop()


def _run_todo(
    client: Any, study: Study, executor: Any, parent_id: str, experiment_id: str, echo: Callable[[str], None], quiet: bool
) -> StudyResult:
    from llem_mlflow.sweep.summary import summarise

    # The parent is open: it must end, whatever happens.
    try:
        executor.record(client, parent_id)
        mark_dead_children(client, study, experiment_id, echo)
        done = finished_counts(client, experiment_id, parent_id)
        todo = study.schedule(done)
        skipped_done = sum(min(done.get(p.config_hash, 0), study.repeats) for p in study.points)
        echo(f"parent run {parent_id} (experiment {experiment_id}): {len(todo)} run(s) to go, {skipped_done} already finished")
        runs = executor.run(StudyRun(client, study, parent_id, experiment_id), todo, echo, quiet)
    except KeyboardInterrupt:
        _end_parent(client, parent_id, "KILLED")
        raise
    except BaseException:
        _end_parent(client, parent_id, "FAILED")  # never leave the parent RUNNING
        raise
    try:
        summarise(client, study, parent_id, experiment_id, echo)
        counts = finished_counts(client, experiment_id, parent_id)
    except BaseException:
        _end_parent(client, parent_id, "FAILED")
        raise
    complete = all(counts.get(p.config_hash, 0) >= study.repeats for p in study.points)
    if not complete:
        client.set_tag(parent_id, "llem.sweep.incomplete", "some points have no FINISHED run; run the study again to retry them")
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


def make_executor(study: Study, echo: Callable[[str], None], quiet: bool) -> Any:
    """The study's executor, as a context manager (Ray connects on entry; only the Ray executor imports ray)."""
    if study.execution.executor == "ray":
        from llem_mlflow.sweep.ray_executor import RayExecutor

        return RayExecutor(study.execution, echo, quiet)
    return LocalExecutor()


class LocalExecutor(contextlib.AbstractContextManager):
    """One point after another, each in a fresh process on this machine."""

    name = "local"

    def record(self, client: Any, parent_id: str) -> None:
        RunLogger(client, parent_id).set_tags({EXECUTOR_TAG: self.name})

    def run(self, sweep: StudyRun, todo: list[tuple[Point, int]], echo: Callable[[str], None], quiet: bool) -> list[PointRun]:
        runs: list[PointRun] = []
        for i, (point, repeat) in enumerate(todo, start=1):
            label = sweep.run_name(point, repeat)
            echo(f"[{i}/{len(todo)}] {label}")
            result = run_point(sweep, point, repeat, echo, quiet)
            runs.append(result)
            echo(f"[{i}/{len(todo)}] {label}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        return runs

    def __exit__(self, *exc: Any) -> None:
        return None


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
        name_run_if_generated(client, parent_id, study.name)  # `mlflow run` named it at random
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
    sweep: StudyRun, point: Point, repeat: int, echo: Callable[[str], None], quiet: bool = False
) -> PointRun:
    """One child run in a fresh process on this machine; its outcome read back from MLflow."""
    spec = point_spec(sweep, point, repeat)
    on_line = None if quiet else (lambda line: echo(f"    {line}"))
    out = run_child(spec, child_env(os.environ), on_line=on_line)
    return record_outcome(sweep, point, repeat, out.run_id, out.exit_code, out.tail, extra_tags={EXECUTOR_TAG: "local"})


def point_spec(sweep: StudyRun, point: Point, repeat: int) -> ChildSpec:
    """What one point's process is given, whichever executor starts it."""
    from llem_mlflow.config.params import config_to_yaml

    return ChildSpec(
        config_yaml=config_to_yaml(point.config),
        config_name=f"point-{point.config_hash}-{repeat}.yaml",
        parent_id=sweep.parent_id,
        experiment_id=sweep.experiment_id,
        run_name=sweep.run_name(point, repeat),
    )


def record_outcome(
    sweep: StudyRun,
    point: Point,
    repeat: int,
    run_id: str | None,
    exit_code: int | None,
    tail: list[str],
    reason: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> PointRun:
    """Read the child's status; mark it FAILED (creating the run if it never existed) when the child could not.

    `reason` is given when the process's fate is known only from outside (a lost Ray task: no exit code).
    """
    client = sweep.client
    if reason is None and exit_code != 0:
        reason = failure_reason(exit_code, tail)
    status = client.get_run(run_id).info.status if run_id else None
    if reason is None and status != "FINISHED":
        reason = f"the run command exited 0 but its run is {status or 'missing (no run_id line)'}"
    if run_id is None:
        run_id = create_failed_child(sweep, point, repeat)
        status = "FAILED"
    elif status in ("RUNNING", "SCHEDULED") or (reason and status == "FINISHED"):
        client.set_terminated(run_id, status="FAILED")
        status = "FAILED"
    tags = {**child_tags(sweep, point, repeat), **(extra_tags or {})}
    if reason:
        tags[FAILURE_TAG] = reason[:5000]
        if exit_code is not None:
            tags[EXIT_CODE_TAG] = str(exit_code)
    RunLogger(client, run_id).set_tags(tags)
    return PointRun(point, repeat, run_id, status, reason)


def child_tags(sweep: StudyRun, point: Point, repeat: int) -> dict[str, str]:
    """The sweep's tags on one child run."""
    return {STUDY_HASH_TAG: sweep.study.study_hash, POINT_TAG: point.name, REPEAT_TAG: str(repeat), ROLE_TAG: "child"}


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


def _end_parent(client: Any, parent_id: str, status: str) -> None:
    # Under `mlflow run` the launcher ends its own run from our exit code.
    if os.environ.get("MLFLOW_RUN_ID") != parent_id:
        client.set_terminated(parent_id, status=status)


def _tag_safe(name: str) -> str:
    return re.sub(r"[^\w.\-/ ]", "_", name)[:200]
