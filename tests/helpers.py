"""Helpers shared by tests: `from helpers import write_config`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


# A tiny online-scenario config (random:tiny on the CPU); tests add their own `online:` section.
ONLINE_BASE: dict[str, Any] = {
    "model": "random:tiny",
    "scenario": "online",
    "max_input_tokens": 32,
    "max_output_tokens": 8,
    "dataset": {"n": 4},
    "decoder": {"preset": "deterministic"},
    "warmup": {"n_batches": 2},
    "baseline": {"enabled": False},
    "energy": {"codecarbon": False},
}


# Prompts (one per batch in the tests that interrupt a run) for a measure phase long enough to be
# interrupted in the middle on a fast machine: a quiet CI runner measured 400 in under 7 s.
LONG_RUN_PROMPTS = 4000


def write_config(path: Path, **sections: object) -> Path:
    """Write a tiny, fast experiment config (random:tiny, CPU) with overrides merged in."""
    import yaml

    base: dict[str, object] = {
        "model": "random:tiny",
        "max_input_tokens": 32,
        "max_output_tokens": 8,
        "dataset": {"source": "builtin", "n": 4},
        "decoder": {"preset": "deterministic", "min_new_tokens": 8},
        "pytorch": {"batch_size": 2},
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "energy": {"codecarbon": False},
        "measure": {"min_duration_s": 0},  # one pass: the tests count tokens of one pass over the prompts
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}  # type: ignore[dict-item]
        else:
            base[key] = value
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


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


def only_run(experiment_name: str | None = None) -> Any:
    """The single run in the store (or in that experiment, which must exist)."""
    if experiment_name is None:
        runs = all_runs()
    else:
        from mlflow import MlflowClient

        client = MlflowClient()
        runs = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
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


def before_batch(monkeypatch: Any, call_number: int, action: Any) -> None:
    """Fault injection from the test: call `action()` just before the `call_number`-th generate() batch
    of the run. The first generate() (cold start) and the warmup batches count: with one warmup
    batch, measured batch k is call k + 2; prefill-only passes (measure.prefill_split) count too.
    Calling it again adds another action (each counts every call)."""
    from llem_mlflow.bench.generation import Generator

    real_run_batch = Generator.run_batch
    calls = []

    def run_batch(self: Any, batch: Any) -> Any:
        calls.append(batch.index)
        if len(calls) == call_number:
            action()
        return real_run_batch(self, batch)

    monkeypatch.setattr(Generator, "run_batch", run_batch)


def invoke_cli(*args: str, expect_exit: int = 0) -> Any:
    """`llem-mlflow ARGS` in-process through click's CliRunner (output as a user sees it)."""
    from click.testing import CliRunner

    from llem_mlflow.cli import main

    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == expect_exit, result.output
    return result


def wait_for_measuring(process: subprocess.Popen, timeout_s: float = 240) -> None:
    """Until the run exists and warmup is over: the store has the run with the device tag, which
    the runner sets right after the model loaded (then warmup takes one batch)."""
    import time

    import pytest

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended before it could be interrupted ({process.returncode}):\n{(err or '')[-3000:]}")
        runs = all_runs()
        if runs and "llem.device.type" in runs[0].data.tags:
            time.sleep(4)  # the first generate(), warmup (one batch) and the start of measure
            return
        time.sleep(0.5)
    pytest.fail("the run did not reach the measure phase in time")


FAIL_IN_WORKER = '''\
"""Written by tests/helpers.py::fail_in_worker: fault injection in a data-parallel worker."""
import os
import sys

_argv = getattr(sys, "orig_argv", sys.argv)
if "llem_mlflow.distributed" in _argv and _argv[_argv.index("llem_mlflow.distributed") + 1] == os.environ.get("LLEM_TEST_FAIL_RANK"):
    from llem_mlflow.bench.generation import Generator

    _real_run_batch, _calls = Generator.run_batch, []

    def _run_batch(self, batch):
        _calls.append(batch.index)
        if len(_calls) == int(os.environ["LLEM_TEST_FAIL_CALL"]):
            raise RuntimeError(os.environ["LLEM_TEST_FAIL_MESSAGE"])
        return _real_run_batch(self, batch)

    Generator.run_batch = _run_batch
'''


def fail_in_worker(monkeypatch: Any, directory: Path, rank: int, call_number: int, message: str) -> None:
    """Fault injection in data-parallel worker `rank`, another process that `before_batch` cannot reach:
    a sitecustomize module put first on PYTHONPATH makes that worker's `call_number`-th generate()
    batch raise RuntimeError(message) (counted as in before_batch: cold start and warmup count)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(FAIL_IN_WORKER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("LLEM_TEST_FAIL_RANK", str(rank))
    monkeypatch.setenv("LLEM_TEST_FAIL_CALL", str(call_number))
    monkeypatch.setenv("LLEM_TEST_FAIL_MESSAGE", message)
