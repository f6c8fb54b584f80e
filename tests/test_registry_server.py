"""Registry, tag-best and compare through a real `mlflow server` on loopback (REST, proxied artifacts)."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest
from helpers import invoke_cli
from mlflow_server import contract_run

from llem_mlflow.tracking.registry import logged_model_id, version_results

pytestmark = pytest.mark.slow
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-40GB"


@pytest.fixture
def server(mlflow_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return mlflow_server


@pytest.fixture
def client(server):
    from mlflow import MlflowClient

    return MlflowClient(server)


@pytest.fixture
def name():
    return f"llm-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def experiment_id(client, name):
    return client.create_experiment(name)  # artifacts go through the server (mlflow-artifacts:/)


def test_register_tag_results_and_tag_best_over_rest(client, name, experiment_id):
    h100_runs = [
        contract_run(client, experiment_id, metrics={"energy/j_per_output_token": e, "throughput/output_tokens_per_s": t})
        for e, t in ((0.5, 100.0), (0.3, 80.0), (0.6, 140.0))
    ]
    for run_id in h100_runs:
        invoke_cli("register", run_id, "--name", name)
    again = invoke_cli("register", h100_runs[1], "--name", name, "--alias", "candidate")
    assert f"{name} version 2 (alias 'candidate')" in again.output
    assert len(client.search_model_versions(f"name = '{name}'")) == 3

    version = client.get_model_version(name, "2")
    assert version.tags["llem.run_id"] == h100_runs[1]
    assert version.tags["llem.j_per_token"] == "0.3000 J/token"
    assert version.tags["llem.hardware"] == "nvidia-h100-80gb-hbm3-x1"
    assert client.get_logged_model(logged_model_id(version)).metrics  # linked over REST too

    # Version 3 also measured on an A100: both results kept, each under its hardware key.
    from llem_mlflow.tracking.registry import tag_version_with_results

    a100_run = contract_run(client, experiment_id, device_name=A100, metrics={"energy/j_per_output_token": 0.2})
    tag_version_with_results(client, name, "3", a100_run)
    results = version_results(client, client.get_model_version(name, "3"))
    assert {r.device_name: r.metrics["energy/j_per_output_token"] for r in results.values()} == {H100: 0.6, A100: 0.2}

    ranked = invoke_cli("tag-best", name, "--metric", "energy/j_per_output_token", "--gpu", H100, "--alias", "most-efficient")
    assert [line.split()[1] for line in ranked.output.splitlines()[2:5]] == ["2", "1", "3"]
    assert str(client.get_model_version_by_alias(name, "most-efficient").version) == "2"
    invoke_cli("tag-best", name, "--metric", "energy/j_per_output_token", "--gpu", A100, "--alias", "most-efficient")
    assert str(client.get_model_version_by_alias(name, "most-efficient").version) == "3"
    invoke_cli("tag-best", name, "--metric", "throughput/output_tokens_per_s", "--gpu", H100, "--alias", "fastest")
    assert str(client.get_model_version_by_alias(name, "fastest").version) == "3"


def test_compare_over_rest_with_summary_run(client, name, experiment_id, tmp_path):
    run_ids = [
        contract_run(client, experiment_id, run_name=f"p{precision}", overrides={"precision": precision}, metrics=m)
        for precision, m in (
            ("fp32", {"energy/j_per_output_token": 0.8, "throughput/output_tokens_per_s": 60.0}),
            ("bf16", {"energy/j_per_output_token": 0.4, "throughput/output_tokens_per_s": 130.0}),
        )
    ]
    rows = list(csv.DictReader(io.StringIO(invoke_cli("compare", "--experiment", name, "--format", "csv").stdout)))
    assert [(r["run_id"], r["precision"]) for r in rows] == [(run_ids[0], "fp32"), (run_ids[1], "bf16")]
    assert rows[1]["throughput/output_tokens_per_s [tokens/s]"] == "130.0"

    plot = tmp_path / "front.png"
    result = invoke_cli("compare", *run_ids, "--format", "json", "--plot", str(plot), "--log-to-run")
    assert json.loads(result.stdout)["differing_params"] == ["precision"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = client.search_runs([experiment_id], "attributes.run_name = 'llem-compare'")[0]
    downloaded = client.download_artifacts(summary.info.run_id, "plots/front.png", str(tmp_path / "dl"))
    assert open(downloaded, "rb").read() == plot.read_bytes()
    table = client.download_artifacts(summary.info.run_id, "comparison/comparison.md", str(tmp_path / "dl"))
    assert "| pbf16 | bf16 | 0.4000 | 130.0 |" in open(table).read()  # plain decimals, 4 digits


def test_transformers_model_resolves_through_the_server(server, name, tmp_path):
    import mlflow
    from test_registry_transformers import (
        assert_loads_same_model,
        log_transformers_model,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llem_mlflow.bench.random_models import random_model_dir
    from llem_mlflow.tracking.registry import resolve_registered_model

    directory, _ = random_model_dir("random:tiny", seed=3)
    tiny = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    mlflow.set_experiment(name)
    version = log_transformers_model(tiny, name, alias="champion")
    resolved, _, resolved_version = resolve_registered_model(f"models:/{name}@champion", dst_dir=tmp_path / "dl")
    assert resolved_version == version
    assert_loads_same_model(resolved, tiny)
