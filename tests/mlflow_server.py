"""A real `mlflow server` on loopback, for tests that must go through REST.

Reuse it from any test module (tests/ is on sys.path under pytest's default
import mode):

    from mlflow_server import mlflow_server  # noqa: F401  (the fixture)

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
def running_mlflow_server(directory: Path) -> Iterator[str]:
    """Start `mlflow server` with its store under `directory`; yield its URI; kill it afterwards."""
    directory = Path(directory)
    artifacts = directory / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = directory / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    with open(log_path, "wb") as log:
        # A new session, so that teardown can kill the server and the workers it forks.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
