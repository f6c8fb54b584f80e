"""The Ray executor: each (point, repeat) is one Ray task holding whole GPUs, running the point's process.

The task runs the same `python -m llem_mlflow run ... --parent-run-id` command
as the local executor (sweep/child.py), on whichever node Ray picks, with the
GPUs Ray reserved for it in CUDA_VISIBLE_DEVICES. The driver (this process)
keeps at most `max_concurrent` tasks in flight, reads each child's outcome from
MLflow as its task ends and tags it with where it ran.

Faults: a task that raised, or whose worker or node died, gives a FAILED child
with the reason; the study goes on. Ctrl-C cancels the tasks: pending ones
never start, running ones stop their child (SIGTERM: it ends its run KILLED),
and any child still RUNNING afterwards is marked KILLED here.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llem_mlflow.sweep.child import DEVICE_ORDER, PARENT_ONLY_ENV, ChildOutcome, ChildSpec, child_env, run_child
from llem_mlflow.sweep.placement import Span, TaskPlacement, gpu_uuids, host_sharing, host_tags, peak_concurrency
from llem_mlflow.sweep.ray_cluster import Cluster, connected, point_request
from llem_mlflow.sweep.study import Point

WAIT_S = 1.0  # how often the driver looks up from ray.wait (Ctrl-C is seen at once anyway)
CANCEL_WAIT_S = 60.0  # time cancelled tasks get to stop their children and end their runs KILLED
CLOCK_SKEW_MS = 5 * 60 * 1000  # a child's start time comes from its node's clock


@dataclass(frozen=True)
class TaskResult:
    outcome: ChildOutcome
    placement: TaskPlacement


def point_task(spec: ChildSpec, forwarded_env: dict[str, str], cwd: str | None, gpus: int, quiet: bool) -> TaskResult:
    """Body of one Ray task, on a worker: launch the point's process on the GPUs Ray reserved."""
    import ray

    context = ray.get_runtime_context()
    # Ray sets CUDA_VISIBLE_DEVICES for a task with GPUs; a point with none must not see the node's GPUs.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "") if gpus else ""
    placement = TaskPlacement(
        node_id=context.get_node_id(),
        node_ip=ray.util.get_node_ip_address(),
        hostname=socket.gethostname(),
        task_id=context.get_task_id() or "",
        gpu_ids=visible if gpus else None,
        gpu_uuids=gpu_uuids(visible) if gpus else None,
    )
    env = child_env(os.environ, {**forwarded_env, **DEVICE_ORDER, "CUDA_VISIBLE_DEVICES": visible})
    on_line = None if quiet else (lambda line: print(f"[{spec.run_name}] {line}", flush=True))
    workdir = cwd if cwd and os.path.isdir(cwd) else None  # the driver's folder, where this node can see it
    outcome = run_child(spec, env, on_line=on_line, cwd=workdir, detached=True)
    return TaskResult(outcome, placement)


def forwarded_env(tracking_uri: str) -> dict[str, str]:
    """The driver's MLflow settings (tracking server, credentials) for the children; workers have their own env."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_") and k not in PARENT_ONLY_ENV}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


class RayExecutor:
    """Runs a study's points as Ray tasks. Use as a context manager: it connects and checks the cluster first."""

    name = "ray"

    def __init__(self, execution: Any, echo: Callable[[str], None], quiet: bool):
        self.execution = execution
        self.echo = echo
        self.quiet = quiet
        self._connection: Any = None
        self.cluster: Cluster | None = None

    def __enter__(self) -> RayExecutor:
        self._connection = connected(self.execution, self.echo, self.quiet)
        self.cluster = self._connection.__enter__()
        self.echo(f"Ray cluster {self.cluster.address}: {self.cluster.slots} point(s) fit at once")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._connection.__exit__(*exc)

    def record(self, client: Any, parent_id: str) -> None:
        """The executor, the cluster's resources and the concurrency on the study's parent run."""
        from llem_mlflow.tracking.run import RunLogger

        assert self.cluster is not None
        parent = RunLogger(client, parent_id)
        parent.set_tags(self.execution.tags())
        client.log_dict(parent_id, self.cluster.snapshot, "sweep/cluster_resources.json")
        parent.log_metrics({"sweep/slots": float(self.concurrency())})

    def concurrency(self) -> int:
        assert self.cluster is not None
        limit = self.execution.max_concurrent
        return min(limit, self.cluster.slots) if limit else self.cluster.slots

    def run(self, sweep: Any, todo: list[tuple[Point, int]], echo: Callable[[str], None], quiet: bool) -> list[Any]:
        import ray
        from mlflow import get_tracking_uri

        from llem_mlflow.sweep.execute import point_spec
        from llem_mlflow.tracking.run import RunLogger

        options = {
            "num_gpus": self.execution.gpus_per_point,
            "num_cpus": self.execution.cpus_per_point,
            "resources": {k: v for k, v in point_request(self.execution).items() if k not in ("CPU", "GPU")},
            "max_retries": 0,  # a retried point would be a second run of the same repeat
        }
        task = ray.remote(point_task)
        env = forwarded_env(get_tracking_uri())
        # Without a limit every task is submitted at once and Ray queues them (an autoscaler can add nodes).
        limit = self.execution.max_concurrent or len(todo)
        since_ms = int(time.time() * 1000) - CLOCK_SKEW_MS
        queue = list(enumerate(todo, start=1))
        in_flight: dict[Any, tuple[int, Point, int]] = {}
        runs, spans = [], []
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    i, (point, repeat) = queue.pop(0)
                    spec = point_spec(sweep, point, repeat)
                    named = task.options(**options, name=f"llem point {spec.run_name}")
                    ref = named.remote(spec, env, os.getcwd(), self.execution.gpus_per_point, quiet)
                    in_flight[ref] = (i, point, repeat)
                    echo(f"[{i}/{len(todo)}] {spec.run_name}: submitted")
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
                for ref in done:
                    i, point, repeat = in_flight.pop(ref)
                    result, span = self._collect(ray, ref, sweep, point, repeat, since_ms)
                    runs.append(result)
                    spans += [span] if span else []
                    label = sweep.run_name(point, repeat)
                    echo(f"[{i}/{len(todo)}] {label}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        except KeyboardInterrupt:
            self._cancel(ray, sweep, in_flight, since_ms, echo)
            raise
        finally:
            for run_id, others in host_sharing(spans).items():
                RunLogger(sweep.client, run_id).set_tags(host_tags(others))
            if spans:
                RunLogger(sweep.client, sweep.parent_id).log_metrics({"sweep/peak_concurrency": float(peak_concurrency(spans))})
        return runs

    def _collect(self, ray: Any, ref: Any, sweep: Any, point: Point, repeat: int, since_ms: int) -> tuple[Any, Span | None]:
        """A finished task's child run, recorded and tagged with where it ran; a lost task's child FAILED."""
        from llem_mlflow.sweep.execute import record_outcome

        try:
            result: TaskResult = ray.get(ref)
        except ray.exceptions.RayError as exc:
            run_id = find_child(sweep, sweep.run_name(point, repeat), since_ms)
            reason = f"the Ray task failed: {task_error(exc)}"
            return record_outcome(sweep, point, repeat, run_id, None, [], reason=reason, extra_tags=self._tags()), None
        out = result.outcome
        recorded = record_outcome(
            sweep, point, repeat, out.run_id, out.exit_code, out.tail, extra_tags={**self._tags(), **result.placement.tags()}
        )
        return recorded, Span(recorded.run_id, result.placement.node_id, out.started_s, out.ended_s)

    def _tags(self) -> dict[str, str]:
        from llem_mlflow.sweep.execute import EXECUTOR_TAG

        return {EXECUTOR_TAG: self.name}

    def _cancel(self, ray: Any, sweep: Any, in_flight: dict[Any, tuple[int, Point, int]], since_ms: int, echo: Callable[[str], None]) -> None:
        """Ctrl-C: pending tasks never start; running ones stop their child; leftovers are marked KILLED."""
        from llem_mlflow.sweep.execute import FAILURE_TAG, child_tags
        from llem_mlflow.tracking.run import RunLogger

        echo(f"interrupted: cancelling {len(in_flight)} Ray task(s)")
        for ref in in_flight:
            ray.cancel(ref)
        ray.wait(list(in_flight), num_returns=len(in_flight), timeout=CANCEL_WAIT_S)
        for _, point, repeat in in_flight.values():
            run_id = find_child(sweep, sweep.run_name(point, repeat), since_ms)
            if run_id is None:
                continue  # the task never started its point
            tags = {**child_tags(sweep, point, repeat), **self._tags()}
            status = sweep.client.get_run(run_id).info.status
            if status in ("RUNNING", "SCHEDULED"):
                sweep.client.set_terminated(run_id, status="KILLED")
            if status != "FINISHED":  # a point that ended just before the Ctrl-C keeps its result
                tags[FAILURE_TAG] = "interrupted: the study was stopped (Ctrl-C)"
            RunLogger(sweep.client, run_id).set_tags(tags)


def find_child(sweep: Any, run_name: str, since_ms: int) -> str | None:
    """The newest child of the parent with this name started in this session (a task that could not report it)."""
    from llem_mlflow.sweep.resume import children

    runs = [
        r
        for r in children(sweep.client, sweep.experiment_id, sweep.parent_id)
        if r.info.run_name == run_name and r.info.start_time >= since_ms
    ]
    return runs[-1].info.run_id if runs else None


def task_error(exc: BaseException) -> str:
    """One line for a Ray error: the task's own exception, or why its worker or node is gone."""
    cause = getattr(exc, "cause", None)
    if cause is not None and cause is not exc:
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}".rstrip(": ")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
