"""The runner in-process against a real sqlite store: phases, trials, beams, metrics consistency."""

from __future__ import annotations

import csv
import io
import statistics

import pytest
from helpers import artifact_json, artifact_paths, artifact_text, only_run, write_config
from mlflow import MlflowClient

from llem_mlflow.launch import launch
from llem_mlflow.stats import MAX_TRIAL_CV


def test_trials_headline_is_the_mean_of_the_trial_history(mlflow_store, tmp_path):
    cfg = write_config(tmp_path / "exp.yaml", n_trials=3, energy={"codecarbon": True}, cooldown={"enabled": True})
    assert launch(str(cfg), experiment_name="trials", quiet=True) == 0
    run = only_run("trials")
    client = MlflowClient()
    m = run.data.metrics
    for name in ("throughput/output_tokens_per_s", "latency/ttft_ms_p50", "energy/j_per_output_token"):
        history = client.get_metric_history(run.info.run_id, f"trial/{name}")
        assert sorted(p.step for p in history) == [1, 2, 3]
        values = [p.value for p in sorted(history, key=lambda p: p.step)]
        assert m[name] == pytest.approx(statistics.mean(values))
        assert m[f"{name}_std"] == pytest.approx(statistics.stdev(values))
        assert 0 < m[f"{name}_ci95_low"] < m[name] < m[f"{name}_ci95_high"]  # positive quantities: never below 0
        assert m[f"{name}_cv"] == pytest.approx(statistics.stdev(values) / statistics.mean(values))
        # trials that spread more than the threshold are flagged, and only those
        assert (m[f"{name}_cv"] > MAX_TRIAL_CV) == (f"{name}: " in run.data.tags.get("llem.warning.trial_drift", ""))
    # every phase has its duration; each trial measured the same requests
    for phase in ("environment", "load", "warmup", "measure"):
        assert m[f"time/{phase}_s"] > 0
    assert "time/baseline_s" not in m  # baseline disabled: no phase ran, a tag says so
    assert run.data.tags["llem.energy.baseline"].startswith("skipped")
    assert m["tokens/output_total"] == 4 * 8
    # cool-down on, no GPU: the tag saying it was skipped reaches the run (issue 11 item 8)
    assert run.data.tags["llem.cooldown"].startswith("skipped: no GPU baseline temperature")
    # every trial's requests are in requests.csv and the latency plot (issue 11 item 9)
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "requests.csv"))))
    assert [int(r["trial"]) for r in rows] == [1] * 4 + [2] * 4 + [3] * 4
    assert [int(r["request_index"]) for r in rows] == [0, 1, 2, 3] * 3
    assert all(float(r["ttft_ms"]) <= float(r["e2e_ms"]) <= float(r["batch_ms"]) for r in rows)
    assert all(float(r["tpot_ms"]) > 0 for r in rows)
    results = artifact_json(run.info.run_id, "results.json")
    assert (results["requests_completed"], results["trials_completed"]) == (12, 3)
    assert "plots/latency.png" in artifact_paths(run.info.run_id)
    # the MLflow UI opens this experiment on its runs table, not the GenAI traces view
    assert client.get_experiment_by_name("trials").tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["mlflow.source.name"] == "llem-mlflow run"


def test_beam_search_has_no_ttft_and_says_why(mlflow_store, tmp_path):
    cfg = write_config(tmp_path / "exp.yaml", pytorch={"batch_size": 2, "num_beams": 2})
    assert launch(str(cfg), experiment_name="beams", quiet=True) == 0
    run = only_run("beams")
    assert "latency/ttft_ms_p50" not in run.data.metrics
    assert "latency/itl_ms_p50" not in run.data.metrics
    assert run.data.metrics["latency/e2e_ms_p50"] > 0
    assert run.data.tags["llem.latency.streaming"].startswith("unavailable")


def test_secrets_in_passthrough_never_reach_params(mlflow_store, tmp_path):
    cfg = write_config(tmp_path / "exp.yaml", passthrough_kwargs={"low_cpu_mem_usage": True}, tags={"team": "a", "api_key": "s3cr3t"})
    assert launch(str(cfg), experiment_name="secrets", quiet=True) == 0
    run = only_run("secrets")
    assert "s3cr3t" not in str(run.data.params) and "s3cr3t" not in str(run.data.tags)
    assert run.data.tags["team"] == "a"


def test_config_error_creates_no_run(mlflow_store, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: random:tiny\ndecoder: {top_p: 7}\n")
    assert launch(str(bad), experiment_name="never", quiet=True) == 2
    from mlflow import MlflowClient

    assert MlflowClient().get_experiment_by_name("never") is None


def test_unknown_carbon_country_is_refused_before_a_run_exists(mlflow_store, tmp_path, capsys):
    cfg = write_config(tmp_path / "exp.yaml", energy={"codecarbon": True, "country_iso_code": "XYZ"})
    assert launch(str(cfg), experiment_name="nowhere", quiet=True) == 2
    assert "energy.country_iso_code: 'XYZ' is not a country" in capsys.readouterr().err
    from mlflow import MlflowClient

    assert MlflowClient().get_experiment_by_name("nowhere") is None


def test_cut_prompts_are_tagged_on_the_run(mlflow_store, tmp_path):
    cfg = write_config(tmp_path / "exp.yaml", max_input_tokens=6)
    assert launch(str(cfg), experiment_name="cut", quiet=True) == 0
    tag = only_run("cut").data.tags["llem.warning.truncated_prompts"]
    assert "of 4 measured prompts were longer than max_input_tokens (6 tokens)" in tag
