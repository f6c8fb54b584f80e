"""One MLflow run, logged in batches through MlflowClient (which splits a batch to the store's limits).

Used by the runner; never imports torch. Under `mlflow run` the run already
exists (MLFLOW_RUN_ID) and is resumed; otherwise a new run is created.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from llem_mlflow.errors import TrackingError

MAX_TAG_VALUE = 8000

# The experiment tag the MLflow 3 UI reads to choose between its GenAI and model-training views.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"

# The fix for a tracking server that refused us, by HTTP status.
AUTH_HINTS = {
    401: " Fix: the tracking server requires a login: set MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment.",
    403: " Fix: the tracking server refused this user: ask its admin for EDIT permission on the experiment, "
    "or log in as another user (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).",
}


class RunLogger:
    """Batched logging to one MLflow run."""

    def __init__(self, client: Any, run_id: str):
        self.client = client
        self.run_id = run_id
        self.ended = False
        self.heartbeat: Any = None  # started by start(); stopped by end()

    @classmethod
    def start(
        cls,
        experiment_name: str | None = None,
        experiment_id: str | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> RunLogger:
        """Resume the run `mlflow run` made (MLFLOW_RUN_ID), or create a new one; its heartbeat starts."""
        from mlflow.exceptions import MlflowException

        from llem_mlflow.tracking.heartbeat import Heartbeat, interval_s
        from llem_mlflow.tracking.store import open_client

        beat_every = interval_s()  # a bad LLEM_HEARTBEAT_S is refused before a run exists
        try:
            client = open_client()  # checks a server first; sets a new sqlite store up safely
            logger = cls._resume_or_create(client, experiment_name, experiment_id, run_name, parent_run_id)
            logger.heartbeat = Heartbeat(client, logger.run_id, beat_every).start()
            return logger
        except MlflowException as exc:
            hint = AUTH_HINTS.get(exc.get_http_status_code(), "")
            raise TrackingError(f"MLflow refused to start the run ({_where()}): {_first_line(exc)}{hint}") from None
        except OSError as exc:  # connection refused etc.
            raise TrackingError(f"cannot reach the MLflow tracking store ({_where()}): {exc}") from None

    @classmethod
    def _resume_or_create(
        cls, client: Any, experiment_name: str | None, experiment_id: str | None, run_name: str | None, parent_run_id: str | None
    ) -> RunLogger:
        active = os.environ.get("MLFLOW_RUN_ID")
        if active:
            run = client.get_run(active)  # fails clearly if it does not exist
            mark_experiment_kind(client, run.info.experiment_id)
            logger = cls(client, active)
            # `mlflow run` created the run without run-context plugins: add our hardware tags.
            from llem_mlflow.tracking.context_provider import HardwareContextProvider

            logger.set_tags(HardwareContextProvider().tags())
            return logger
        experiment_id = experiment_id or _experiment_id(client, experiment_name)
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_SOURCE_NAME

        mark_experiment_kind(client, experiment_id)
        ours = {MLFLOW_SOURCE_NAME: "llem-mlflow run"}  # not the path of __main__.py
        if parent_run_id:
            ours[MLFLOW_PARENT_RUN_ID] = parent_run_id
        tags = resolve_tags(ours)
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        return cls(client, run.info.run_id)

    # --- logging ------------------------------------------------------------------
    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_TAG_VALUE]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0, timestamp_ms: int | None = None) -> None:
        ts = timestamp_ms or int(time.time() * 1000)
        self.log_metric_points((name, value, ts, step) for name, value in metrics.items())

    def log_history(self, history: dict[str, list[tuple[int, float]]]) -> None:
        """Metric histories with their real timestamps (step = sample number)."""
        self.log_metric_points(
            (name, value, ts, step) for name, points in history.items() for step, (ts, value) in enumerate(points)
        )

    def log_metric_points(self, points: Iterable[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id, metrics=[Metric(name, float(value), int(ts), int(step)) for name, value, ts, step in points])

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        try:
            self.client.log_artifact(self.run_id, str(local_path), artifact_path)
        except OSError as exc:  # e.g. disk full: say which file and where it was going
            name = "/".join(p for p in (artifact_path, Path(local_path).name) if p)
            self._remove_stale(name)  # an older version (results.json "complete") must not stand for this one
            where = f"cannot store artifact {name!r} of run {self.run_id} (from {local_path}) in {self.artifact_uri()}"
            raise _located(exc, where) from exc

    def _remove_stale(self, name: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(self.client.get_run(self.run_id).info.artifact_uri).delete_artifacts(name)
        except Exception:  # nothing there, or a store that cannot delete: nothing more to do
            pass

    def artifact_uri(self) -> str:
        from llem_mlflow.redact import redact_uri

        try:
            return redact_uri(self.client.get_run(self.run_id).info.artifact_uri)
        except Exception:
            return "the run's artifact store"

    def log_json(self, data: Any, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """MLflow writes the text to a temp file, then stores it. With the temp folder full (or unwritable),
        a local artifact store still gets it, written in place: error.txt is kept where that is possible."""
        try:
            self.client.log_text(self.run_id, text, artifact_file)
            return
        except OSError as exc:  # e.g. disk full (in the temp folder or in the store): which file, and where
            error = exc
        if self._write_in_place(text, artifact_file):
            return
        self._remove_stale(artifact_file)
        where = f"cannot store artifact {artifact_file!r} of run {self.run_id} in {self.artifact_uri()} (via the temp folder {tempfile.gettempdir()})"
        raise _located(error, where) from error

    def _write_in_place(self, text: str, artifact_file: str) -> bool:
        from mlflow.utils.file_utils import local_file_uri_to_path

        uri = self.client.get_run(self.run_id).info.artifact_uri
        if "://" in uri and not uri.startswith("file:"):
            return False
        target = Path(local_file_uri_to_path(uri)) / artifact_file
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            return True
        except OSError:
            target.unlink(missing_ok=True)  # a half-written file must not pass for the artifact
            return False

    def end(self, status: str) -> None:
        """Mark the run terminated (FINISHED, FAILED or KILLED). Idempotent."""
        if self.ended:
            return
        if self.heartbeat is not None:
            self.heartbeat.stop()  # before the end: a late beat must not follow it
        self.client.set_terminated(self.run_id, status)
        self.ended = True

    def where(self) -> str:
        """A line telling the user where the run is."""
        from llem_mlflow.tracking.store import shown_uri

        uri = shown_uri(self.client.tracking_uri)
        run = self.client.get_run(self.run_id)
        line = f"run_id: {self.run_id} (experiment {run.info.experiment_id}) at {uri}"
        page = run_page(run.info.experiment_id, self.run_id)
        if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
            line += f"\nsee it with: mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000/{page})"
        elif uri.startswith(("http://", "https://")):
            line += f"\nsee it at: {uri.rstrip('/')}/{page}"
        return line


def run_page(experiment_id: str, run_id: str) -> str:
    """The UI's address of a run, in its classic "Model training" view: MLflow 3.17 picks the view
    from this query parameter (else from a per-browser switch that starts on GenAI), not from the
    experiment's kind tag."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def mark_experiment_kind(client: Any, experiment_id: str) -> None:
    """Tell the MLflow UI that this experiment holds classic runs (params, metrics, charts), so it
    opens on the runs table rather than the GenAI traces view. A kind already set is kept.
    (MLflow 3.17's UI follows its per-browser GenAI / Model training switch instead: run_page.)"""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG in experiment.tags:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    except MlflowException:
        # Parallel runs starting in a new experiment race to set it; one wins, which is all we need.
        # (A store that refuses it for another reason costs only the UI hint, never the run.)
        pass


def _experiment_id(client: Any, name: str | None) -> str:
    env_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return env_id or "0"
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # Another run created it between our look-up and our create (parallel runs).
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Writing a local file (the run's workdir): an OS error (a full disk) says which file."""
    try:
        yield
    except OSError as exc:
        raise _located(exc, f"cannot write {path}") from exc


def _located(exc: OSError, where: str) -> OSError:
    """The same OS error (errno kept), its message saying which file and where."""
    if exc.errno is None:
        return OSError(f"{exc}: {where}")
    return OSError(exc.errno, f"{exc.strerror or exc}: {where}")


def _where() -> str:
    from llem_mlflow.tracking.store import shown_uri

    return f"tracking URI {shown_uri()}"


def _first_line(exc: Exception) -> str:
    from llem_mlflow.redact import redact_uri

    return redact_uri(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__

