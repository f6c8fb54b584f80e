"""Find an earlier run of the same study and what it already finished.

A study's parent run carries the tag `llem.sweep.study_hash`; its children
carry `mlflow.parentRunId` and `llem.config_hash` (logged by `llem-mlflow
run`). A point counts as done once it has as many FINISHED children as the
study's `repeats`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from llem_mlflow.tracking.registry import search_all
from llem_mlflow.tracking.version_tags import TAG_CONFIG_HASH

STUDY_HASH_TAG = "llem.sweep.study_hash"
ROLE_TAG = "llem.sweep.role"
POINT_TAG = "llem.sweep.point"
REPEAT_TAG = "llem.sweep.repeat"
CONFIG_HASH_TAG = TAG_CONFIG_HASH
PARENT_TAG = "mlflow.parentRunId"
RESUMED_IN_TAG = "llem.sweep.resumed_in"


def earlier_parents(client: Any, experiment_id: str, study_hash: str, exclude: str | None = None) -> list[Any]:
    """Parent runs of this study in the experiment, newest first (deleted runs do not count)."""
    runs = _search(
        client,
        experiment_id,
        f"tags.`{STUDY_HASH_TAG}` = '{study_hash}' and tags.`{ROLE_TAG}` = 'parent'",
        order_by=["attributes.start_time DESC"],
    )
    return [r for r in runs if r.info.run_id != exclude]


def children(client: Any, experiment_id: str, parent_id: str, status: str | None = None) -> list[Any]:
    """Child runs of one parent, oldest first; only those with `status` when given."""
    query = f"tags.`{PARENT_TAG}` = '{parent_id}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return _search(client, experiment_id, query, order_by=["attributes.start_time ASC"])


def finished_counts(client: Any, experiment_id: str, parent_id: str) -> dict[str, int]:
    """config hash -> number of FINISHED children under the parent."""
    runs = children(client, experiment_id, parent_id, status="FINISHED")
    return dict(Counter(r.data.tags.get(CONFIG_HASH_TAG) for r in runs if r.data.tags.get(CONFIG_HASH_TAG)))


def adopt_children(client: Any, experiment_id: str, old_parent_id: str, new_parent_id: str) -> int:
    """Move the FINISHED children of an earlier parent under the new one, so one parent holds the study.

    Used when `mlflow run` created a fresh parent for a resumed study. The old
    parent keeps its unfinished children and is tagged with where the study went.
    """
    moved = 0
    for run in children(client, experiment_id, old_parent_id, status="FINISHED"):
        client.set_tag(run.info.run_id, PARENT_TAG, new_parent_id)
        moved += 1
    client.set_tag(old_parent_id, RESUMED_IN_TAG, new_parent_id)
    if client.get_run(old_parent_id).info.status == "RUNNING":
        client.set_terminated(old_parent_id, status="KILLED")
    return moved


def _search(client: Any, experiment_id: str, query: str, order_by: list[str]) -> list[Any]:
    from mlflow.entities import ViewType

    return search_all(
        client.search_runs, [experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, order_by=order_by
    )
