"""Opening the tracking store (tracking/store.py): a new sqlite store is set up once, under a lock,
however many runs start on it at once; a store left half-built is named with the fix."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_config

from llem_mlflow.launch import EXIT_BAD_INPUT, launch

# A revision in the middle of MLflow's migrations, whose next step creates `_alembic_tmp_tags`:
# where the race of parallel first opens leaves a new store.
MID_MIGRATION_REVISION = "4465047574b1"


@pytest.mark.slow
def test_four_first_runs_at_once_on_a_new_sqlite_file_all_finish(tmp_path):
    """The quickstart's store, started by four runs at once in an empty folder (the issue's loop)."""
    folder = tmp_path / "empty"
    folder.mkdir()
    cfg = write_config(tmp_path / "exp.yaml", warmup={"enabled": False}, dataset={"n": 2})
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--quiet", "-o", f"random_seed={seed}"],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for seed in (1, 2, 3, 4)
    ]
    results = [(p.returncode, err) for p in processes for _, err in [p.communicate(timeout=600)]]
    assert [code for code, _ in results] == [0, 0, 0, 0], "\n".join(err[-2000:] for _, err in results)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs(["0"])
    assert sorted(r.data.params["random_seed"] for r in runs) == ["1", "2", "3", "4"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert [t for t in _tables(folder / "mlflow.db") if t.startswith("_alembic_tmp")] == []  # no leftovers
    assert not list(folder.glob("*.lock"))  # the lock lives in the temp folder, not beside the store


def test_a_half_built_store_is_named_with_a_fix_that_works(tmp_path, monkeypatch, capsys):
    db = tmp_path / "mlflow.db"
    _half_built_store(db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "exp.yaml")
    assert launch(str(cfg), quiet=True) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"the MLflow sqlite store {db} is half-built" in err
    assert "delete it" in err and "_alembic_tmp_" in err and f"mlflow db upgrade {uri}" in err

    # The fix for a store that holds runs, as the message gives it, repairs it.
    with sqlite3.connect(db) as con:
        for table in [t for t in _tables(db) if t.startswith("_alembic_tmp_")]:
            con.execute(f"DROP TABLE {table}")
    upgrade = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True, timeout=300)
    assert upgrade.returncode == 0, upgrade.stderr[-2000:]
    from mlflow import MlflowClient

    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]


def _half_built_store(db: Path) -> None:
    """What a lost migration race leaves: a schema stopped mid-way, and a temporary table that the
    next migration step creates already there."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    url = f"sqlite:///{db}"
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, MID_MIGRATION_REVISION)
        connection.execute(sqlalchemy.text("CREATE TABLE _alembic_tmp_tags (x INTEGER)"))
    engine.dispose()


def _tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
