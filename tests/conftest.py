"""Shared fixtures: a real MLflow store per test, offline Hugging Face, GPU tests skipped without CUDA."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Session-wide fixtures: a real `mlflow server` (tests/mlflow_server.py) and a local Ray cluster
# with fake GPUs (tests/ray_cluster.py), each started once, on loopback only.
pytest_plugins = ["mlflow_server", "ray_cluster"]


def pytest_configure(config: pytest.Config) -> None:
    # Nothing may reach a model hub; random: models and shipped prompts need no network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Ray: never join a configured cluster; a local one takes 127.0.0.1 as its address (read at `import ray`).
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and NVML (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.fixture(autouse=True)
def no_active_mlflow_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits a run or experiment from the environment (mlflow.set_experiment() in one test
    leaves MLFLOW_EXPERIMENT_ID behind for the next)."""
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One random-model cache for the whole session (tests and their subprocesses)."""
    cache = tmp_path_factory.mktemp("llem-cache")
    os.environ["LLEM_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow sqlite store, made once: creating one costs seconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory, _migrated_store: Path) -> Iterator[str]:
    """One sqlite store shared by a module's tests (they use their own names); cwd is its folder."""
    directory = tmp_path_factory.mktemp("module-store")
    shutil.copy(_migrated_store, directory / "mlflow.db")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(directory)
        yield uri


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _migrated_store: Path) -> str:
    """A fresh sqlite MLflow store in tmp_path, also for subprocesses; cwd is tmp_path."""
    import contextlib
    import sqlite3

    db = tmp_path / "mlflow.db"
    shutil.copy(_migrated_store, db)
    # The Default experiment's artifact location was fixed (absolute) in the template: move it here.
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(tmp_path / "mlruns" / "0"),))
        con.commit()
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The MLproject folder as a clean clone would have it (no venvs, no run output)."""
    dest = tmp_path / "project"
    ignore = shutil.ignore_patterns(".venv*", ".git", "mlruns", "mlartifacts", "*.db", "__pycache__", ".hypothesis", ".pytest_cache", "*.egg-info")
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest
