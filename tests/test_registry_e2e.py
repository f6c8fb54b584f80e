"""End to end through `llem-mlflow run`: run two configs, compare them, tag the best version;
benchmark a transformers-flavor registered model as models:/<name>@<alias>."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import invoke_cli, write_config

from llem_mlflow.metrics_registry import format_number
from llem_mlflow.tracking.registry import logged_model_id, version_results
from llem_mlflow.tracking.version_tags import hardware_slug

pytestmark = pytest.mark.slow


def llem_run(config: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "llem_mlflow", "run", str(config), "--quiet", *args],
        capture_output=True, text=True, timeout=600, env=os.environ.copy(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_run_two_configs_compare_and_tag_best(mlflow_store, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient()
    registry = {"model_name": "tiny-llm", "tags": {"purpose": "e2e"}}
    for batch_size in (1, 4):
        config = write_config(
            tmp_path / f"bs{batch_size}.yaml", pytorch={"batch_size": batch_size}, energy={"codecarbon": True}, registry=registry
        )
        llem_run(config, "--experiment-name", "walkthrough", "--run-name", f"bs{batch_size}")

    versions = sorted(client.search_model_versions("name = 'tiny-llm'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    runs = {v.tags["llem.run_id"]: v for v in versions}
    for run_id, version in runs.items():
        run = client.get_run(run_id)
        assert version.tags["purpose"] == "e2e"
        assert version.tags["llem.config_hash"] == run.data.tags["llem.config_hash"]
        slug = hardware_slug(run.data.tags["llem.device.name"], run.data.tags["llem.device.count"])
        measured = run.data.metrics["energy/j_per_output_token"]
        assert version.tags["llem.hardware"] == slug
        assert version.tags["llem.j_per_token"].startswith(f"{format_number(measured)} J/token")  # then its quality
        result = version_results(client, version)[slug]
        assert result.run_id == run_id and result.metrics["energy/j_per_output_token"] == measured
        # The figures are linked to the prompt set the run logged as its dataset.
        dataset = run.inputs.dataset_inputs[0].dataset
        model = client.get_logged_model(logged_model_id(version))
        assert {(m.dataset_name, m.dataset_digest) for m in model.metrics} == {(dataset.name, dataset.digest)}

    # Re-registering a run made by the runner returns its version.
    again = invoke_cli("register", versions[0].tags["llem.run_id"], "--name", "tiny-llm")
    assert "tiny-llm version 1" in again.output

    plot = tmp_path / "pareto.png"
    table = invoke_cli("compare", "--experiment", "walkthrough", "--format", "csv", "--plot", str(plot)).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [r["run"] for r in rows] == ["bs1", "bs4"]
    assert [r["pytorch.batch_size"] for r in rows] == ["1", "4"]
    for row in rows:
        assert float(row["energy/j_per_output_token [J/token]"]) == client.get_run(row["run_id"]).data.metrics[
            "energy/j_per_output_token"
        ]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ranking = invoke_cli("tag-best", "tiny-llm", "--metric", "energy/j_per_output_token", "--alias", "most-efficient").stdout
    energies = {str(v.version): client.get_run(v.tags["llem.run_id"]).data.metrics["energy/j_per_output_token"] for v in versions}
    expected_best = min(energies, key=energies.get)
    assert f"alias 'most-efficient' -> version {expected_best}" in ranking
    assert str(client.get_model_version_by_alias("tiny-llm", "most-efficient").version) == expected_best


def test_benchmark_a_registered_transformers_model(mlflow_store, tmp_path):
    import mlflow
    from test_registry_transformers import log_transformers_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llem_mlflow.bench.random_models import random_model_dir
    from llem_mlflow.tracking.registry import tag_version_with_results, version_results

    directory, _ = random_model_dir("random:tiny", seed=11)
    mlflow.set_experiment("hf-models")
    version = log_transformers_model(
        (AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)), "tiny-hf", "champion"
    )

    config = write_config(tmp_path / "registered.yaml", model="models:/tiny-hf@champion")
    llem_run(config, "--experiment-name", "registered")
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("registered").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "models:/tiny-hf@champion"
    assert run.data.metrics["throughput/output_tokens_per_s"] > 0

    # The runner may tag the version itself; tagging again with the same run is idempotent.
    tag_version_with_results(client, "tiny-hf", version, run)
    results = version_results(client, client.get_model_version("tiny-hf", version))
    slug = hardware_slug(run.data.tags["llem.device.name"], run.data.tags["llem.device.count"])
    assert results[slug].run_id == run.info.run_id
    assert results[slug].metrics["throughput/output_tokens_per_s"] == run.data.metrics["throughput/output_tokens_per_s"]

    missing = write_config(tmp_path / "missing.yaml", model="models:/tiny-hf/99")
    result = subprocess.run(
        [sys.executable, "-m", "llem_mlflow", "run", str(missing), "--quiet"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "models:/tiny-hf/99" in result.stderr and "Traceback" not in result.stderr
