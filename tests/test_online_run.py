"""scenario: online end to end: an MLflow run (closed loop, two trials), compare against request rate,
and a request-rate sweep (slow)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from helpers import ONLINE_BASE, all_runs, artifact_paths, artifact_text, invoke_cli, only_run
from mlflow import MlflowClient
from mlflow_server import contract_run

from llem_mlflow.launch import launch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE = ONLINE_BASE


def write(path, extra=None, **online):
    path.write_text(yaml.safe_dump({**BASE, **(extra or {}), "online": {"kv_cache_blocks": 16, **online}}))
    return path


def test_closed_loop_run_logs_load_figures_timeline_and_schedule(mlflow_store, tmp_path):
    config = write(tmp_path / "online.yaml", {"n_trials": 2, "energy": {"codecarbon": True}}, max_concurrency=3, n_requests=12)
    assert launch(str(config), experiment_name="online", quiet=True) == 0
    run = only_run("online")
    client = MlflowClient()
    m, tags, params = run.data.metrics, run.data.tags, run.data.params
    assert run.info.status == "FINISHED"
    assert params["scenario"] == "online" and params["online.max_concurrency"] == "3"
    for name in ("load/achieved_requests_per_s", "load/mean_concurrency", "latency/queue_ms_p50", "latency/tpot_ms_p50"):
        assert m[name] > 0, name
        history = client.get_metric_history(run.info.run_id, f"trial/{name}")
        assert sorted(p.step for p in history) == [1, 2]
    assert m["tokens/output_total"] <= 12 * 8
    assert m["load/mean_concurrency"] <= 3
    # closed loop: never more than max_concurrency requests outstanding (waiting + in flight)
    in_flight = client.get_metric_history(run.info.run_id, "timeline/requests_in_flight")
    waiting = client.get_metric_history(run.info.run_id, "timeline/requests_waiting")
    assert len(in_flight) == len(waiting) == 3 * 12
    assert max(a.value + b.value for a, b in zip(in_flight, waiting)) <= 3
    assert tags["llem.online.steady_window"].startswith("measure: ") and " | measure/2: " in tags["llem.online.steady_window"]
    if tags["llem.online.steady_energy"].split(": ", 1)[1].startswith("gpu"):  # a machine with NVML
        assert m["energy/steady_j"] > 0
    else:  # the CPU alone: CodeCarbon has no sub-window, so nothing is made up (and nothing prorated)
        assert "energy/steady_j" not in m and "energy/j_per_request" not in m
        assert "energy/steady_j_per_output_token" not in m
        assert "GPU unavailable" in tags["llem.online.steady_energy"]
    assert "CodeCarbon) exist only for the whole measure phase" in tags["llem.online.steady_energy"]
    assert m["energy/total_j"] > 0 and m["energy/j_per_output_token"] > 0  # the whole phase, as measured
    files = artifact_paths(run.info.run_id)
    assert {"online/schedule.json", "plots/load_timeline.png", "requests.csv"} <= set(files)
    schedule = json.loads(artifact_text(run.info.run_id, "online/schedule.json"))
    assert schedule["mode"] == "closed loop" and schedule["scheduled_s"] is None and len(schedule["arrival_s"]) == 12
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "requests.csv"))))
    assert len(rows) == 2 * 12 and "token_s" not in rows[0] and "batch_ms" not in rows[0]
    assert [r["trial"] for r in rows] == ["1"] * 12 + ["2"] * 12
    assert {"arrival_s", "admitted_s", "queue_ms", "ttft_ms", "tpot_ms", "in_steady_window", "reset"} <= set(rows[0])
    assert all(float(r["ttft_ms"]) >= float(r["queue_ms"]) for r in rows)


def test_refused_online_options_stop_before_a_run_exists(mlflow_store, tmp_path, capsys):
    config = tmp_path / "beams.yaml"
    config.write_text(yaml.safe_dump({**BASE, "pytorch": {"num_beams": 2}, "online": {"request_rate": 2, "n_requests": 4}}))
    assert launch(str(config), experiment_name="refused") == 2
    assert "cannot honour pytorch.num_beams" in capsys.readouterr().err
    assert all_runs() == []


def test_compare_plots_energy_and_latency_against_request_rate(module_store, tmp_path):
    client = MlflowClient(module_store)
    experiment_id = client.create_experiment("rate-curve", artifact_location=(tmp_path / "artifacts").as_uri())
    for rate, energy, ttft in ((2.0, 0.9, 20.0), (8.0, 0.5, 60.0)):
        metrics = {
            "load/achieved_requests_per_s": rate * 0.95,
            "energy/j_per_output_token": energy * 1.2,
            "energy/steady_j_per_output_token": energy,
            "latency/ttft_ms_p50": ttft,
            "latency/tpot_ms_p50": 5.0,
        }
        overrides = {**BASE, "online": {"request_rate": rate, "n_requests": 16}}
        contract_run(client, experiment_id, run_name=f"rate={rate:g}", metrics=metrics, overrides=overrides)
    plot = tmp_path / "curve.png"
    result = invoke_cli("compare", "--experiment", "rate-curve", "--plot", str(plot), "--x-axis", "request-rate")
    header = result.output.splitlines()[0]
    assert "achieved req/s" in header and "steady J/token" in header and "TPOT p50 ms" in header
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    offline = client.create_experiment("no-rate", artifact_location=(tmp_path / "offline").as_uri())
    contract_run(client, offline, metrics={"energy/j_per_output_token": 0.4})
    plot = str(tmp_path / "x.png")
    result = invoke_cli("compare", "--experiment", "no-rate", "--plot", plot, "--x-axis", "request-rate", expect_exit=2)
    assert "only scenario: online runs" in result.output


@pytest.mark.slow
def test_a_request_rate_sweep_gives_one_child_per_rate(mlflow_store, tmp_path):
    study = tmp_path / "rates.yaml"
    base = {**BASE, "online": {"request_rate": 1, "n_requests": 12, "kv_cache_blocks": 16}}
    study.write_text(yaml.safe_dump({"name": "rates", "base": base, "sweep": {"online.request_rate": [2, 12]}}))
    invoke_cli("sweep", str(study), "--experiment-name", "rates", "--quiet")
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("rates").experiment_id])
    children = [r for r in runs if r.data.tags.get("llem.sweep.role") == "child"]
    parent = next(r for r in runs if r.data.tags.get("llem.sweep.role") == "parent")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    rates = {r.data.params["online.request_rate"]: r.data.metrics["load/achieved_requests_per_s"] for r in children}
    assert rates["12.0"] > 2 * rates["2.0"]  # the seeded schedules differ by a factor of 6 in mean rate
    assert "sweep/load_curve.png" in artifact_paths(parent.info.run_id)
