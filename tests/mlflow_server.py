"""A real `mlflow server` on loopback, for tests that must go through REST.

conftest.py loads this module as a plugin, so every test can ask for the
session-wide fixture (one server for the whole session):

    def test_x(mlflow_server, monkeypatch):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)

or, outside pytest, `with running_mlflow_server(directory) as uri: ...`.
The server keeps its sqlite store and artifacts under the given directory and
is killed at teardown. One server serves the whole test session (it takes a
few seconds to start on a small machine); tests isolate themselves with their
own experiment and registered-model names.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_mlflow_server(
    directory: Path, port: int | None = None, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start `mlflow server` with its store under `directory`; yield its URI; kill it afterwards.

    The same directory and port again restart the same server (same store): tests use that to kill
    and restart a server during a run. `extra_args` go to `mlflow server` (e.g. --app-name basic-auth).
    """
    directory = Path(directory)
    artifacts = directory / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = directory / f"server-{time.monotonic_ns()}.log"
    command = [
        sys.executable, "-m", "mlflow", "server", *extra_args,
        "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    server_env = {**os.environ, "MLFLOW_TRACKING_URI": "", **(env or {})}
    with open(log_path, "wb") as log:
        # A new session, so that teardown can kill the server and the workers it forks.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env, start_new_session=True)
    try:
        _wait_until_healthy(uri, process, log_path)
        yield uri
    finally:
        _stop(process)


def _wait_until_healthy(uri: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    _stop(process)
    raise RuntimeError(f"mlflow server did not answer {uri}/health in {START_TIMEOUT_S:.0f} s:\n{log_path.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    import signal

    os.killpg(process.pid, signal.SIGTERM)  # the group of the server we started, nothing else
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a real `mlflow server` on 127.0.0.1 (sqlite store, proxied artifacts)."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


# --- runs that carry the benchmark run contract, made directly with MlflowClient ------------------

DEFAULT_METRICS = {
    "energy/j_per_output_token": 0.5,
    "energy/total_j": 40.0,
    "throughput/output_tokens_per_s": 120.0,
    "latency/ttft_ms_p50": 20.0,
    "latency/e2e_ms_p50": 300.0,
    "memory/process_peak_rss_mb": 900.0,
}


def contract_run(
    client,
    experiment_id: str,
    *,
    model: str = "random:tiny",
    device_name: str = "NVIDIA H100 80GB HBM3",
    device_count: int = 1,
    device_type: str = "cuda",
    metrics: dict[str, float] | None = None,
    overrides: dict | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """A FINISHED run holding what a finished `llem-mlflow run` holds (params, metrics, llem.* tags)."""
    from mlflow.entities import Metric, Param, RunTag

    from llem_mlflow import __version__
    from llem_mlflow.config.models import ExperimentConfig
    from llem_mlflow.config.params import config_hash, config_to_params

    cfg = ExperimentConfig.model_validate({"model": model, **(overrides or {})})
    tags = {
        **(tags or {}),
        "llem.version": __version__,
        "llem.config_hash": config_hash(cfg),
        "llem.model": model,
        "llem.device.type": device_type,
        "llem.device.name": device_name,
        "llem.device.count": str(device_count),
    }
    run = client.create_run(experiment_id, run_name=run_name)
    now = int(time.time() * 1000)
    values = DEFAULT_METRICS if metrics is None else metrics
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, now, 0) for k, v in values.items()],
        params=[Param(k, v) for k, v in config_to_params(cfg).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
