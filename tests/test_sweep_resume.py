"""Parent/child bookkeeping against a real MLflow sqlite store (no experiment is run here)."""

import csv
import io
import textwrap

import pytest

from llem_mlflow.sweep.study import parse_study_text

STUDY = textwrap.dedent("""
    name: tiny-grid
    base: {model: "random:tiny", max_output_tokens: 4, dataset: {n: 2}}
    sweep:
      pytorch.batch_size: [1, 2]
      random_seed: [1, 2]
""")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating one takes seconds); each test has its own experiment."""
    with pytest.MonkeyPatch.context() as mp:
        store_dir = tmp_path_factory.mktemp("store")
        mp.chdir(store_dir)  # artifacts of experiments created by name go to ./mlruns: keep them out of the repo
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_dir}/mlflow.db")
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture()
def client(store, request, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    return MlflowClient()


@pytest.fixture()
def study():
    return parse_study_text(STUDY, "study.yaml")


def add_child(client, experiment_id, parent_id, point, status, metrics=None, repeat=1, tags=None):
    run = client.create_run(
        experiment_id,
        run_name=point.name,
        tags={"mlflow.parentRunId": parent_id, "llem.config_hash": point.config_hash, "llem.sweep.repeat": str(repeat),
              **(tags or {})},  # fmt: skip
    )
    for key, value in point.overrides.items():
        client.log_param(run.info.run_id, key, str(value))
    for key, value in (metrics or {}).items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def test_parent_is_created_then_found_again(client, study):
    from llem_mlflow.sweep.execute import open_parent

    parent, exp = open_parent(client, study, "studies-" + study.name, None, echo=lambda s: None)
    run = client.get_run(parent)
    assert run.info.experiment_id == exp and run.info.run_name == "tiny-grid"
    assert run.data.tags["llem.sweep.study_hash"] == study.study_hash
    assert run.data.params == {"sweep.pytorch.batch_size": "[1, 2]", "sweep.random_seed": "[1, 2]", "sweep.n_points": "4"}
    client.set_terminated(parent, status="KILLED")

    again, exp2 = open_parent(client, study, "studies-" + study.name, None, echo=lambda s: None)
    assert (again, exp2) == (parent, exp)
    assert client.get_run(parent).info.status == "RUNNING"
    other = parse_study_text(STUDY.replace("[1, 2]\n  random_seed", "[1, 4]\n  random_seed"), "s2.yaml")
    assert open_parent(client, other, "studies-" + study.name, None, echo=lambda s: None)[0] != parent


def test_only_finished_children_count_and_only_they_are_skipped(client, study):
    from llem_mlflow.sweep.execute import open_parent
    from llem_mlflow.sweep.resume import finished_counts

    parent, exp = open_parent(client, study, None, None, echo=lambda s: None)
    assert client.get_experiment(exp).name == "test_only_finished_children_count_and_only_they_are_skipped"
    p = study.points
    add_child(client, exp, parent, p[0], "FINISHED")
    add_child(client, exp, parent, p[1], "FAILED")
    add_child(client, exp, parent, p[2], "KILLED")
    stranger = client.create_run(exp, tags={"llem.config_hash": p[3].config_hash})  # not a child: does not count
    client.set_terminated(stranger.info.run_id, "FINISHED")
    done = finished_counts(client, exp, parent)
    assert done == {p[0].config_hash: 1}
    assert [pt.name for pt, _ in study.schedule(done)] == [p[1].name, p[2].name, p[3].name]


def test_under_mlflow_run_the_new_parent_adopts_finished_children(client, study, monkeypatch):
    from llem_mlflow.sweep.execute import open_parent
    from llem_mlflow.sweep.resume import finished_counts

    old, exp = open_parent(client, study, None, None, echo=lambda s: None)
    finished = add_child(client, exp, old, study.points[0], "FINISHED")
    failed = add_child(client, exp, old, study.points[1], "FAILED")
    launched = client.create_run(exp).info.run_id  # what `mlflow run` creates before calling us
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)

    parent, _ = open_parent(client, study, None, None, echo=lambda s: None)
    assert parent == launched
    assert client.get_run(finished).data.tags["mlflow.parentRunId"] == launched
    assert client.get_run(failed).data.tags["mlflow.parentRunId"] == old
    assert client.get_run(old).data.tags["llem.sweep.resumed_in"] == launched
    assert client.get_run(old).info.status == "KILLED"
    assert finished_counts(client, exp, parent) == {study.points[0].config_hash: 1}


def test_a_child_that_died_without_a_run_gets_a_failed_one(client, study):
    from llem_mlflow.config.params import config_to_params
    from llem_mlflow.sweep.execute import StudyRun, open_parent, record_outcome

    parent, exp = open_parent(client, study, None, None, echo=lambda s: None)
    point = study.points[1]
    out = record_outcome(StudyRun(client, study, parent, exp), point, 1, None, -9, ["loading model", "Killed"])
    run = client.get_run(out.run_id)
    assert out.status == run.info.status == "FAILED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["llem.config_hash"] == point.config_hash
    assert run.data.tags["llem.sweep.failure_reason"] == "exit code -9: loading model | Killed"
    assert run.data.params == config_to_params(point.config)


def test_a_child_left_running_is_marked_failed_with_its_error(client, study):
    from llem_mlflow.sweep.execute import StudyRun, open_parent, record_outcome

    parent, exp = open_parent(client, study, None, None, echo=lambda s: None)
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    sweep = StudyRun(client, study, parent, exp)
    out = record_outcome(sweep, study.points[0], 1, child, 1, ["x", "Error: CUDA out of memory"])
    assert out.status == client.get_run(child).info.status == "FAILED"
    assert client.get_run(child).data.tags["llem.sweep.failure_reason"] == "CUDA out of memory"


def test_summary_table_best_points_and_plot(client, study):
    from llem_mlflow.sweep.execute import open_parent
    from llem_mlflow.sweep.summary import summarise

    parent, exp = open_parent(client, study, None, None, echo=lambda s: None)
    p = study.points
    add_child(client, exp, parent, p[0], "FINISHED", {"energy/j_per_output_token": 2.0, "throughput/output_tokens_per_s": 10.0})
    add_child(client, exp, parent, p[0], "FINISHED", {"energy/j_per_output_token": 4.0, "throughput/output_tokens_per_s": 30.0}, repeat=2)
    add_child(client, exp, parent, p[1], "FINISHED", {"energy/j_per_output_token": 2.5, "throughput/output_tokens_per_s": 15.0})
    add_child(client, exp, parent, p[2], "FAILED", {"energy/j_per_output_token": 0.1})  # failed runs never win

    rows = summarise(client, study, parent, exp, echo=lambda s: None)
    assert len(rows) == 4
    run = client.get_run(parent)
    # point 0 averages 3.0 J/token and 20 tok/s; point 1 has 2.5 and 15
    assert run.data.metrics["best/energy/j_per_output_token"] == 2.5
    assert run.data.tags["llem.sweep.best.energy/j_per_output_token"] == p[1].name
    assert run.data.metrics["best/throughput/output_tokens_per_s"] == 20.0
    assert run.data.tags["llem.sweep.best.throughput/output_tokens_per_s"] == p[0].name
    assert "latency/ttft_ms_p50" in run.data.tags["llem.sweep.best_missing"]

    local = client.download_artifacts(parent, "sweep")
    import pathlib

    table = list(csv.DictReader(io.StringIO((pathlib.Path(local) / "summary.csv").read_text())))
    assert [r["status"] for r in table] == ["FINISHED", "FINISHED", "FINISHED", "FAILED"]
    assert table[0]["pytorch.batch_size"] == "1" and table[0]["energy/j_per_output_token"] == "2.0"
    png = pathlib.Path(local) / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (pathlib.Path(local) / "plan.json").exists()


def test_no_plot_without_energy(client, study):
    from llem_mlflow.sweep.execute import open_parent
    from llem_mlflow.sweep.summary import summarise

    parent, exp = open_parent(client, study, None, None, echo=lambda s: None)
    add_child(client, exp, parent, study.points[0], "FINISHED", {"throughput/output_tokens_per_s": 10.0})
    summarise(client, study, parent, exp, echo=lambda s: None)
    tags = client.get_run(parent).data.tags
    assert "energy/j_per_output_token" in tags["llem.sweep.plot_skipped"]
    assert "energy/j_per_output_token" in tags["llem.sweep.best_missing"]


def test_summary_shows_the_best_points_interval_and_energy_quality(client, study):
    from llem_mlflow.sweep.execute import open_parent
    from llem_mlflow.sweep.summary import summarise

    parent, exp = open_parent(client, study, None, None, echo=lambda s: None)
    p = study.points
    estimated = {"llem.energy.total_quality": "estimated", "llem.energy.total_sources": "cpu+ram"}
    with_trials = {"energy/j_per_output_token": 2.0, "energy/j_per_output_token_ci95_low": 1.5,
                   "energy/j_per_output_token_ci95_high": 2.7, "throughput/output_tokens_per_s": 10.0}  # fmt: skip
    add_child(client, exp, parent, p[0], "FINISHED", with_trials, tags=estimated)
    add_child(client, exp, parent, p[1], "FINISHED", {"energy/j_per_output_token": 3.0, "throughput/output_tokens_per_s": 20.0})
    said = []
    rows = summarise(client, study, parent, exp, echo=said.append)
    assert rows[0]["energy_quality"] == "CPU+RAM estimated" and rows[1]["energy_quality"] == ""
    assert f"best energy/j_per_output_token: {p[0].name} (2.000 J/token, 95% CI 1.500..2.700, CPU+RAM estimated)" in said
    assert f"best throughput/output_tokens_per_s: {p[1].name} (20.00 tokens/s)" in said  # one trial: no interval
    metrics = client.get_run(parent).data.metrics
    assert metrics["best/energy/j_per_output_token_ci95_low"] == 1.5 and metrics["best/energy/j_per_output_token_ci95_high"] == 2.7
    assert "best/throughput/output_tokens_per_s_ci95_low" not in metrics
