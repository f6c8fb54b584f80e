"""Against a real `mlflow server` on loopback (sqlite backend, served artifacts):
runs log over HTTP, survive a server restart, run two at once, and meet basic-auth.

The shared server comes from tests/mlflow_server.py; the tests that need their own server
(restart on the same port, basic-auth) start one the same way with `_server` below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import artifact_bytes, artifact_json, artifact_paths, artifact_text, write_config
from mlflow_server import free_port, running_mlflow_server

from llem_mlflow.config.loader import load_config
from llem_mlflow.config.params import config_to_params
from llem_mlflow.launch import EXIT_BAD_INPUT, EXIT_OK, launch

# What a client needs to ride out a restart: MLflow retries refused connections with backoff
# (urllib3 Retry: sleeps 0, 2, 4, 8, ... s with factor 1; 10 retries is MLflow's upper limit).
RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.mark.slow
def test_runs_at_once_each_end_with_their_own_params_and_metrics(mlflow_server, tmp_path):
    experiment = f"parallel-{time.time_ns()}"
    # Made first: processes creating one new experiment at once race (see the test below).
    # Two concurrent runs show what four did (each keeps its own params, metrics and artifacts), in half the time.
    _client(mlflow_server).create_experiment(experiment)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, **RETRY_ENV}
    cfg = write_config(tmp_path / "exp.yaml", warmup={"enabled": False}, pytorch={"batch_size": 1})
    sizes = {f"r{i}": n for i, n in enumerate((2, 3))}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--quiet", "--experiment-name", experiment,
             "--run-name", name, "-o", f"dataset.n={n}", "-o", f"random_seed={n}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for name, n in sizes.items()
    }
    for name, process in processes.items():
        out, err = process.communicate(timeout=400)
        assert process.returncode == 0, (name, err[-3000:])

    client = _client(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(sizes)
    for run in runs:
        n = sizes[run.info.run_name]
        assert run.info.status == "FINISHED"
        own = load_config(cfg, (f"dataset.n={n}", f"random_seed={n}"))
        for key, value in config_to_params(own).items():
            assert run.data.params[key] == value, (run.info.run_name, key)
        assert run.data.metrics["tokens/output_total"] == n * 8
        # Artifacts went through the server's proxy (mlflow-artifacts:/) and read back.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert artifact_json(run.info.run_id, "results.json", mlflow_server)["requests_completed"] == n
        files = set(artifact_paths(run.info.run_id, uri=mlflow_server))
        assert {"config/experiment.yaml", "config/resolved.json", "requests.csv"} <= files


@pytest.mark.slow
def test_server_killed_and_restarted_during_a_run_loses_nothing(tmp_path):
    directory, port = tmp_path / "server", free_port()
    cfg = write_config(tmp_path / "exp.yaml", dataset={"n": 12}, pytorch={"batch_size": 1})
    with running_mlflow_server(directory, port) as uri:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, **RETRY_ENV}
        process = subprocess.Popen(
            [sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--quiet", "--run-name", "survivor"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        line = process.stdout.readline()  # "run_id: ..." once the run exists on the server
        assert line.startswith("run_id: "), (line, process.stderr.read()[-3000:] if process.poll() is not None else "")
        run_id = line.split()[1]
    # The server is down now (killed with its workers); the run goes on logging into the void.
    killed_at = time.time()
    time.sleep(3)
    assert process.poll() is None, "the run must still be alive, waiting on its retries"
    with running_mlflow_server(directory, port) as uri:
        restarted_at = time.time()
        out, err = process.communicate(timeout=400)
        assert process.returncode == EXIT_OK, err[-3000:]
        run = _client(uri).get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.info.start_time / 1000 < killed_at < restarted_at < run.info.end_time / 1000
        for key, value in config_to_params(load_config(cfg)).items():
            assert run.data.params[key] == value, key
        m = run.data.metrics
        assert m["tokens/output_total"] == 12 * 8 and m["latency/e2e_ms_p50"] > 0 and m["time/measure_s"] > 0
        assert artifact_json(run_id, "results.json", uri)["status"] == "complete"
        assert {"config/experiment.yaml", "config/resolved.json", "requests.csv"} <= set(artifact_paths(run_id, uri=uri))


def test_runs_starting_together_share_a_new_experiment(mlflow_store, monkeypatch):
    """Parallel runs (sweeps, the four-run test) name a new experiment: the one that loses the race to
    create it must use the winner's, not fail. The lost race is replayed exactly: the experiment is
    created by "another process" between this one's lookup and its create."""
    from mlflow import MlflowClient

    from llem_mlflow.tracking.run import RunLogger

    real_lookup = MlflowClient.get_experiment_by_name
    calls = []

    def lookup_then_lose_the_race(self, name):
        calls.append(name)
        if len(calls) == 1:
            MlflowClient().create_experiment(name)  # the other process wins
            return None  # what this process saw a moment earlier
        return real_lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lookup_then_lose_the_race)
    logger = RunLogger.start(experiment_name="shared-new")
    logger.end("FINISHED")
    assert MlflowClient().get_run(logger.run_id).info.experiment_id == real_lookup(MlflowClient(), "shared-new").experiment_id


AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{db}
admin_username = admin
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def basic_auth_setup(tmp_path: Path, admin_password: str) -> tuple[Path, dict[str, str]]:
    """A folder with the basic-auth app's ini (its own user db) and the server environment that reads it."""
    directory = tmp_path / "auth-server"
    directory.mkdir()
    ini = directory / "auth.ini"
    ini.write_text(AUTH_INI.format(db=directory / "auth.db", password=admin_password))
    return directory, {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "llem-tests"}


@pytest.mark.slow
def test_basic_auth_server_needs_credentials(tmp_path, monkeypatch, capsys):
    password = "llem-Test-pw-7"
    directory, server_env = basic_auth_setup(tmp_path, password)
    cfg = write_config(tmp_path / "exp.yaml", warmup={"enabled": False})
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    with running_mlflow_server(directory, extra_args=("--app-name", "basic-auth"), env=server_env) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

        # Without credentials: our error, exit 2, no traceback, and it says how to log in.
        code = launch(str(cfg), quiet=True)
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT
        assert "Traceback" not in err
        assert uri in err and "401" in err
        assert "MLFLOW_TRACKING_USERNAME" in err and "MLFLOW_TRACKING_PASSWORD" in err

        # A wrong password is refused the same way.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        assert launch(str(cfg), quiet=True) == EXIT_BAD_INPUT
        assert "401" in capsys.readouterr().err

        # With them: a complete run.
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        code = launch(str(cfg), quiet=True, run_name="authed")
        assert code == EXIT_OK, capsys.readouterr().err[-3000:]
        client = _client(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert [(r.info.run_name, r.info.status) for r in runs] == [("authed", "FINISHED")]
        assert runs[0].data.metrics["tokens/output_total"] == 4 * 8
        assert "results.json" in artifact_paths(runs[0].info.run_id, uri=uri)
        # The password itself went nowhere in the run.
        assert password not in str(runs[0].data.params) + str(runs[0].data.tags)
        assert password not in artifact_text(runs[0].info.run_id, "config/resolved.json", uri)


def test_losing_the_race_to_mark_the_experiment_kind_does_not_fail_the_run(mlflow_store, monkeypatch):
    """Four runs starting in one new experiment each try to set the UI's experiment-kind tag; on a
    server the losers get a UNIQUE-constraint error. The run must start regardless."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from llem_mlflow.tracking.run import RunLogger

    def lose_the_race(self, experiment_id, key, value):
        raise MlflowException("UNIQUE constraint failed: experiment_tags.key, experiment_tags.experiment_id")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", lose_the_race)
    logger = RunLogger.start(experiment_name="raced")
    logger.end("FINISHED")
    assert MlflowClient().get_run(logger.run_id).info.status == "FINISHED"


# --- a server that is not there, or not answering: exit 2 in seconds, with the reason ------------
def _unreachable(uri: str, tmp_path, monkeypatch, capsys) -> tuple[int, str, float]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = write_config(tmp_path / "exp.yaml")
    started = time.monotonic()
    code = launch(str(cfg), quiet=True)
    return code, capsys.readouterr().err, time.monotonic() - started


def test_a_server_refusing_connections_fails_at_once_with_the_fix(tmp_path, monkeypatch, capsys):
    port = free_port()  # nothing listens there
    code, err, took = _unreachable(f"http://alice:sekrit-pw@127.0.0.1:{port}", tmp_path, monkeypatch, capsys)
    assert code == EXIT_BAD_INPUT
    assert "connection refused" in err and "mlflow server" in err and f"127.0.0.1:{port}" in err
    assert "sekrit-pw" not in err and "http://<redacted>@127.0.0.1" in err  # credentials never printed
    assert took < 60  # MLflow's own retries took ~270 s; the check itself takes well under a second


def test_an_unknown_host_is_named_as_a_dns_problem(tmp_path, monkeypatch, capsys):
    code, err, took = _unreachable("http://no-such-host.invalid:5000", tmp_path, monkeypatch, capsys)
    assert code == EXIT_BAD_INPUT
    assert "no-such-host.invalid" in err and "DNS" in err
    assert took < 60


def test_a_server_that_never_answers_times_out_in_seconds(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        code, err, took = _unreachable(f"http://127.0.0.1:{port}", tmp_path, monkeypatch, capsys)
    assert code == EXIT_BAD_INPUT
    assert "connected, but no answer within 30 s (timeout)" in err
    assert took < 60


@pytest.mark.slow
def test_credentials_in_the_uri_and_secret_overrides_are_never_shown_or_stored(tmp_path, monkeypatch, capfd, project_copy):
    """A login server reached with `http://user:password@host`, and a token passed as an override: the
    password and the token appear in no param, tag or artifact, and in none of the lines printed by
    llem-mlflow or by `mlflow run` (its "View run" and "Running command" lines included)."""
    from urllib.parse import urlparse

    password, token = "llem-Uri-pw-9", "sekrit-override-token-3"
    directory, server_env = basic_auth_setup(tmp_path, password)
    cfg = write_config(tmp_path / "exp.yaml", warmup={"enabled": False})
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    with running_mlflow_server(directory, extra_args=("--app-name", "basic-auth"), env=server_env) as plain_uri:
        port = urlparse(plain_uri).port
        uri = f"http://admin:{password}@127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        client = _client(uri)

        # llem-mlflow run, in-process: every line it and MLflow print, from both of its processes
        # (capfd: the reporter process prints the run line and MLflow's "View run" line).
        assert launch(str(cfg), quiet=False, run_name="direct") == EXIT_OK
        out, err = capfd.readouterr()
        assert f"at http://<redacted>@127.0.0.1:{port}" in out
        assert password not in out + err

        # mlflow run, the override's value read from the environment: `${LLEM_TEST_TOKEN}` is what is stored.
        env = {**os.environ, "LLEM_TEST_TOKEN": token}
        ok = _mlflow_run(project_copy, cfg, "passthrough_kwargs.token=${LLEM_TEST_TOKEN}", env)
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert password not in ok.stdout + ok.stderr and token not in ok.stdout + ok.stderr
        runs = {r.info.run_name: r for r in client.search_runs(["0"])}
        projected = [r for name, r in runs.items() if name != "direct"]
        assert len(projected) == 1 and projected[0].info.status == "FINISHED"
        # (mlflow run stores the value shell-quoted)
        assert projected[0].data.params["overrides"].strip("'") == "passthrough_kwargs.token=${LLEM_TEST_TOKEN}"
        for run in runs.values():
            assert _nowhere_in(client, run, uri, (password, token)) == []

        # A literal secret in -P overrides: mlflow run stores the param before we start; the run is refused
        # with how to erase it, and no line printed shows the value.
        literal = _mlflow_run(project_copy, cfg, f"passthrough_kwargs.token={token}", os.environ.copy())
        assert literal.returncode != 0
        assert token not in literal.stdout + literal.stderr and password not in literal.stdout + literal.stderr
        refused = [r for r in client.search_runs(["0"]) if r.info.status == "FAILED"]
        assert len(refused) == 1
        error = refused[0].data.tags["llem.error"]
        assert "already stored the `overrides` parameter" in error and "mlflow runs delete" in error and "${NAME}" in error
        assert token not in error


def _mlflow_run(project, cfg, overrides: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local",
               "-P", f"config={cfg}", "-P", f"overrides={overrides}"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _nowhere_in(client, run, uri: str, secrets: tuple[str, ...]) -> list[str]:
    places = {f"param {k}": v for k, v in run.data.params.items()}
    places.update({f"tag {k}": v for k, v in run.data.tags.items()})
    for path in artifact_paths(run.info.run_id, uri=uri):
        places[f"artifact {path}"] = artifact_bytes(run.info.run_id, path, uri).decode("utf-8", errors="replace")
    return [f"{s} in {where}" for where, text in places.items() for s in secrets if s in text]
