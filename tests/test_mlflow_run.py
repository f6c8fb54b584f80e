"""The main job end to end: the real `mlflow run . --env-manager local` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import artifact_json, mlflow_run, only_run, write_config
from mlflow import MlflowClient

from llem_mlflow.config.loader import load_config
from llem_mlflow.config.params import config_from_params, config_to_params
from llem_mlflow.tracking.reporter import REQUEST_COLUMNS

pytestmark = pytest.mark.slow


def test_quickstart_through_mlflow_run(mlflow_store, project_copy):
    cfg_path = project_copy / "examples" / "quickstart.yaml"
    result = mlflow_run(
        project_copy, "-P", f"config={cfg_path}", "--experiment-name", "quick", "--run-name", "first"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run("quick")
    client = MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"

    cfg = load_config(cfg_path)
    params = run.data.params
    for key, value in config_to_params(cfg).items():
        assert params[key] == value, key
    assert config_from_params(params) == cfg
    assert params["config"] == str(cfg_path)  # mlflow run's own param, untouched
    assert "overrides" not in params  # not given: not logged (no junk `overrides = ''`)

    m = run.data.metrics
    # min_new_tokens == max_output_tokens; whole passes over the prompts until the window lasts 1 s (the CPU default)
    expected_tokens = m["measure/passes"] * cfg.dataset.n * cfg.max_output_tokens
    assert m["tokens/output_total"] == expected_tokens and m["time/measure_s"] >= 1.0
    assert 0 < m["latency/ttft_ms_p50"] <= m["latency/e2e_ms_p50"]
    assert m["latency/ttft_ms_p99"] <= m["latency/e2e_ms_p99"]
    assert m["throughput/output_tokens_per_s"] == pytest.approx(expected_tokens / m["time/measure_s"], rel=1e-6)
    for name in ("time/load_s", "time/warmup_s", "memory/process_peak_rss_mb", "flops/per_output_token"):
        assert m[name] > 0, name
    assert not any(name.startswith("memory/gpu") for name in m)  # no GPU here: absent, not 0

    # Energy on a CPU machine: CodeCarbon's CPU/RAM energy present, GPU energy absent with a reason.
    assert m["energy/cpu_j"] > 0 and m["energy/ram_j"] > 0 and m["emissions/kg_co2eq"] > 0
    assert "energy/gpu_j" not in m
    assert run.data.tags["llem.energy.gpu_method"].startswith("unavailable")
    assert run.data.tags["llem.energy.total_quality"] in ("estimated", "measured", "mixed: cpu measured, ram estimated")

    tags = run.data.tags
    assert tags["llem.config_hash"] and tags["llem.version"] and tags["llem.device.type"] == "cpu"
    assert tags["llem.host.gpu.name"] == "none"  # the run context provider plugin

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "results.json", "requests.csv", "plots"} <= artifacts
    config_files = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert {"config/experiment.yaml", "config/resolved.json"} <= config_files


def test_bad_config_under_mlflow_run_fails_the_run_cleanly(mlflow_store, project_copy, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: random:tiny\npytorch:\n  batchsize: 2\n")
    result = mlflow_run(project_copy, "-P", f"config={bad}", "--experiment-name", "bad")
    assert result.returncode != 0
    assert 'did you mean "pytorch.batch_size"' in result.stderr
    assert "Traceback" not in result.stderr.split("mlflow.exceptions")[0]
    run = only_run("bad")
    assert run.info.status == "FAILED"
    assert "pytorch.batchsize" in run.data.tags["llem.error"]


def test_llem_run_outside_mlflow_run(mlflow_store, tmp_path):
    cfg = write_config(tmp_path / "exp.yaml")
    cmd = [sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--experiment-name", "direct", "--run-name", "r1",
           "-o", "dataset.n=6", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run_id: " in result.stdout
    run = only_run("direct")
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params["dataset.n"] == "6"
    assert run.data.metrics["tokens/output_total"] == 6 * 8
    # MLflow-native records: the prompt set as the dataset input, the request table as an MLflow table.
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.name == "builtin-prompts" and json.loads(dataset.profile)["num_rows"] == 6
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": "requests.json", "type": "table"}]
    table = artifact_json(run.info.run_id, "requests.json")
    assert table["columns"] == REQUEST_COLUMNS and len(table["data"]) == 6


def test_mlflow_run_names_the_run_after_the_config_and_logs_no_empty_param(mlflow_store, project_copy, tmp_path):
    """No --run-name: MLflow names the run at random (`popular-boar-196`); we rename it after the config file.
    An `experiment:` in the config cannot move the run `mlflow run` made in Default: we say so."""
    cfg = write_config(tmp_path / "tiny-bench.yaml", experiment="wanted")
    result = mlflow_run(project_copy, "-P", f"config={cfg}", "-P", "overrides=dataset.n=2 decoder.top_k=7")
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run("Default")
    assert run.info.run_name == "tiny-bench" and run.data.tags["mlflow.runName"] == "tiny-bench"
    params = run.data.params
    assert params["dataset.n"] == "2" and params["decoder.top_k"] == "7"  # -P overrides still reaches the config
    assert not [k for k, v in params.items() if v.strip("'\"") == ""], params  # no empty or quoted-empty value
    assert "note: the config asks for experiment 'wanted'" in result.stderr and "--experiment-name wanted" in result.stderr
    # The Default experiment now says it holds classic runs (the UI kind tag).
    assert MlflowClient().get_experiment("0").tags["mlflow.experimentKind"] == "custom_model_development"
    assert "?workflowType=machine_learning" in result.stdout  # the printed link opens the runs view


def test_config_run_name_and_experiment_are_used_when_the_caller_names_none(mlflow_store, tmp_path):
    cfg = write_config(tmp_path / "exp.yaml", run_name="from-config", experiment="from-config-exp")
    for extra in ([], ["--run-name", "from-cli", "--experiment-name", "cli-exp"]):
        result = subprocess.run(
            [sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--quiet", *extra], capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert only_run("from-config-exp").info.run_name == "from-config"
    assert only_run("cli-exp").info.run_name == "from-cli"  # the caller's choice wins
