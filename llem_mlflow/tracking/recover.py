"""Dead runs: RUNNING runs whose process is gone (kill -9, the OOM killer, a lost host) are marked
FAILED with the reason, keeping everything they logged. Used by `llem-mlflow recover` and by a
resumed sweep for its own children. How a run is judged dead: tracking/heartbeat.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llem_mlflow.tracking.heartbeat import dead_reason, last_beat_ms, now_iso
from llem_mlflow.tracking.registry import search_all

RECOVERED_TAG = "llem.recovered"


@dataclass(frozen=True)
class DeadRun:
    run: Any
    reason: str


def find_dead_runs(client: Any, experiment_ids: list[str], stale_after_s: float | None = None) -> list[DeadRun]:
    """The RUNNING llem runs of these experiments whose process is dead."""
    from mlflow.entities import ViewType

    if not experiment_ids:
        return []
    running = search_all(
        client.search_runs, experiment_ids, "attributes.status = 'RUNNING'", run_view_type=ViewType.ACTIVE_ONLY, max_results=1000
    )
    dead = []
    for run in running:
        reason = dead_reason(run, stale_after_s)
        if reason:
            dead.append(DeadRun(run, reason))
    return dead


def mark_dead(client: Any, dead: DeadRun, by: str) -> None:
    """FAILED, with the reason as `llem.error` and error.txt; nothing logged is removed.
    The end time is the last heartbeat: the last moment the run is known to have been alive."""
    from llem_mlflow.tracking.run import RunLogger

    run_id = dead.run.info.run_id
    logger = RunLogger(client, run_id)
    logger.set_tags(
        {"llem.error": dead.reason, "llem.status": "failed", RECOVERED_TAG: f"marked FAILED by {by} at {now_iso()}"}
    )
    try:
        logger.log_text(dead.reason + "\n", "error.txt")
    except Exception:  # the artifact store may be what failed; the status matters more
        pass
    client.set_terminated(run_id, "FAILED", end_time=last_beat_ms(dead.run))


def experiment_ids(client: Any, names_or_ids: tuple[str, ...] = ()) -> list[str]:
    """Ids of the named experiments (a name or an id each), or of every active experiment."""
    from llem_mlflow.errors import TrackingError

    if not names_or_ids:
        return [e.experiment_id for e in search_all(client.search_experiments, max_results=1000)]
    ids = []
    for item in names_or_ids:
        found = client.get_experiment_by_name(item)
        if found is None and item.isdigit():
            from mlflow.exceptions import MlflowException

            try:
                found = client.get_experiment(item)
            except MlflowException:
                found = None
        if found is None:
            raise TrackingError(f"no experiment named (or with id) {item!r}: check --experiment")
        ids.append(found.experiment_id)
    return ids
