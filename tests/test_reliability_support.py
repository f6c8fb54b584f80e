"""Helpers shared by the reliability, security and server tests (this module holds no tests).

Import with `from test_reliability_support import ...` (tests/ is on sys.path under pytest).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow sqlite store, made once: creating one costs seconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(mlflow_store: str, _template_db: Path, tmp_path: Path) -> str:
    """The lead's `mlflow_store` (fresh sqlite store in tmp_path, env set), pre-migrated by copying a template."""
    import sqlite3

    db = tmp_path / "mlflow.db"
    shutil.copy(_template_db, db)
    # The Default experiment's artifact location was fixed (absolute) when the template was made: move it here.
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(tmp_path / "mlruns" / "0"),))
        con.commit()
    return mlflow_store


def llem(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m llem_mlflow ARGS` in a subprocess (the real CLI, exit code and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "llem_mlflow", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )  # fmt: skip


def mlflow_run(project: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real `mlflow run PROJECT --env-manager local ARGS`."""
    cmd = [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def all_runs() -> list[Any]:
    """Every run of every experiment in the current tracking store."""
    from mlflow import MlflowClient

    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def only_run() -> Any:
    runs = all_runs()
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    return runs[0]


def _client(uri: str | None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_paths(run_id: str, path: str | None = None, uri: str | None = None) -> list[str]:
    """Every artifact file of a run, recursively (uri: the tracking server; None: MLFLOW_TRACKING_URI)."""
    client = _client(uri)
    files = []
    for item in client.list_artifacts(run_id, path):
        files.extend(artifact_paths(run_id, item.path, uri) if item.is_dir else [item.path])
    return files


def artifact_bytes(run_id: str, path: str, uri: str | None = None) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(_client(uri).download_artifacts(run_id, path, tmp)).read_bytes()


def artifact_text(run_id: str, path: str, uri: str | None = None) -> str:
    return artifact_bytes(run_id, path, uri).decode("utf-8")


def artifact_json(run_id: str, path: str, uri: str | None = None) -> Any:
    return json.loads(artifact_text(run_id, path, uri))


def assert_failed_with(run: Any, *needles: str, status: str = "FAILED") -> None:
    """The run ended `status` with the error as tag llem.error and as artifact error.txt."""
    assert run.info.status == status, run.info.status
    error = run.data.tags.get("llem.error", "")
    error_file = artifact_text(run.info.run_id, "error.txt")
    for needle in needles:
        assert needle in error, (needle, error)
        assert needle in error_file, (needle, error_file)
