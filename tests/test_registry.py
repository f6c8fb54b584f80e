"""Registry: register a run's model as a reference, hardware-keyed version tags, tag-best (real sqlite store)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow_server import DEFAULT_METRICS, contract_run

from llem_mlflow.cli import main as cli_main
from llem_mlflow.errors import ModelLoadError, TrackingError
from llem_mlflow.tracking import best
from llem_mlflow.tracking.registry import (
    find_version_for_run,
    logged_model_id,
    parse_models_uri,
    register_run,
    resolve_registered_model,
    tag_version_with_results,
    version_results,
)
from llem_mlflow.tracking.version_tags import hardware_slug

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-40GB"


@pytest.fixture
def client(module_store):
    from mlflow import MlflowClient

    return MlflowClient(module_store)


@pytest.fixture
def name(request):
    """A registered model name of this test's own."""
    return request.node.name.replace("[", "-").replace("]", "")


@pytest.fixture
def experiment_id(client, name, tmp_path):
    return client.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())


def test_hardware_slug_is_stable_and_dotless():
    assert hardware_slug(H100, 1) == "nvidia-h100-80gb-hbm3-x1"
    assert hardware_slug("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "2") == "intel-xeon-platinum-8375c-cpu-2-90ghz-x2"
    assert "." not in hardware_slug("AMD EPYC 7R13 Processor 2.6 GHz", 1)


def test_register_run_tags_version_and_links_metrics(client, name, experiment_id):
    run_id = contract_run(client, experiment_id, overrides={"pytorch": {"revision": "abc123"}}, model="org/some-llm")
    version = register_run(client, run_id, name, alias="candidate", extra_tags={"team": "green"})

    # A handful of short tags, each readable whole on the registry pages.
    tags = version.tags
    assert str(version.version) == "1" and version.run_id == run_id
    assert tags == {
        "llem.run_id": run_id,
        "llem.model": "org/some-llm",
        "llem.config_hash": client.get_run(run_id).data.tags["llem.config_hash"],
        "llem.hardware": "nvidia-h100-80gb-hbm3-x1",
        "llem.j_per_token": "0.5000 J/token",
        "team": "green",
    }
    assert str(client.get_model_version_by_alias(name, "candidate").version) == "1"

    # An external LoggedModel: a reference, no weights; the run's figures are its metrics, linked to the run.
    logged = client.get_logged_model(logged_model_id(version))
    assert logged.tags["mlflow.model.isExternal"] == "true"
    assert logged.params["model"] == "org/some-llm" and logged.params["revision"] == "abc123"
    assert logged.params["kind"] == "hub"
    assert logged.source_run_id == run_id
    linked = {m.key: m for m in logged.metrics}
    assert set(linked) == set(DEFAULT_METRICS)
    assert linked["energy/j_per_output_token"].value == 0.5 and linked["memory/process_peak_rss_mb"].value == 900.0
    assert {m.run_id for m in logged.metrics} == {run_id}
    # Which run is the result on which hardware: the LoggedModel's tags.
    assert logged.tags["llem.hw.nvidia-h100-80gb-hbm3-x1.run_id"] == run_id
    assert logged.tags["llem.hw.nvidia-h100-80gb-hbm3-x1.device_name"] == H100
    # Linking did not add points to the run's own history.
    assert len(client.get_metric_history(run_id, "energy/j_per_output_token")) == 1


def test_version_metrics_are_linked_to_the_runs_prompt_set(client, name, experiment_id):
    """A run that logged its prompt set: the model's metrics carry that dataset; histories stay on the run."""
    from mlflow.entities import Metric

    from llem_mlflow.bench.prompts import Prompt
    from llem_mlflow.config.models import ExperimentConfig
    from llem_mlflow.tracking.datasets import log_prompt_dataset
    from llem_mlflow.tracking.run import RunLogger

    run_id = contract_run(client, experiment_id)
    cfg = ExperimentConfig(model="random:tiny", dataset={"n": 3})
    log_prompt_dataset(RunLogger(client, run_id), cfg, [Prompt(0, "Why?"), Prompt(1, "How?"), Prompt(0, "Why?")])
    client.log_batch(run_id, metrics=[Metric("trial/energy/j_per_output_token", 0.4, 1, 1), Metric("timeline/gpu0_power_w", 80.0, 1, 0)])
    dataset = client.get_run(run_id).inputs.dataset_inputs[0].dataset
    assert dataset.name == "builtin-prompts" and dataset.digest

    version = register_run(client, run_id, name)
    logged = client.get_logged_model(logged_model_id(version))
    assert {(m.dataset_name, m.dataset_digest) for m in logged.metrics} == {(dataset.name, dataset.digest)}
    assert not any(m.key.startswith(("trial/", "timeline/")) for m in logged.metrics)
    results = version_results(client, version)
    assert results["nvidia-h100-80gb-hbm3-x1"].metrics == DEFAULT_METRICS


def test_reregistering_a_run_returns_the_same_version(client, name, experiment_id):
    run_id = contract_run(client, experiment_id)
    first = register_run(client, run_id, name)
    again = register_run(client, run_id, name, alias="newest")
    assert str(again.version) == str(first.version)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert str(client.get_model_version_by_alias(name, "newest").version) == str(first.version)
    # A different run makes a new version.
    other = register_run(client, contract_run(client, experiment_id), name)
    assert str(other.version) == "2"
    assert str(find_version_for_run(client, name, run_id).version) == "1"


def test_random_and_local_models_are_references_too(client, name, experiment_id, tmp_path):
    random_version = register_run(client, contract_run(client, experiment_id, model="random:tiny"), name + "-rnd")
    random_model = client.get_logged_model(logged_model_id(random_version))
    assert random_model.params["kind"] == "random" and random_model.params["revision"] == "None"
    local = tmp_path / "weights"
    local.mkdir()
    local_version = register_run(client, contract_run(client, experiment_id, model=str(local)), name + "-loc")
    assert client.get_logged_model(logged_model_id(local_version)).params["kind"] == "local"
    assert local_version.tags["llem.model"] == str(local)


def test_register_refuses_a_run_without_hardware_tags(client, name, experiment_id):
    run = client.create_run(experiment_id)
    client.set_tag(run.info.run_id, "llem.model", "random:tiny")
    with pytest.raises(TrackingError, match="llem.device.name"):
        register_run(client, run.info.run_id, name)
    with pytest.raises(TrackingError, match="not found"):
        register_run(client, "0" * 32, name)


def test_results_on_two_gpus_live_side_by_side(client, name, experiment_id):
    version = register_run(client, contract_run(client, experiment_id, device_name=H100), name)
    a100_run = contract_run(
        client, experiment_id, device_name=A100, metrics={"energy/j_per_output_token": 0.9, "energy/gpu_j": 70.0}
    )
    tag_version_with_results(client, name, version.version, a100_run)
    version = client.get_model_version(name, version.version)
    results = version_results(client, version)
    assert set(results) == {"nvidia-h100-80gb-hbm3-x1", "nvidia-a100-sxm4-40gb-x1"}
    assert results["nvidia-h100-80gb-hbm3-x1"].metrics["energy/j_per_output_token"] == 0.5
    assert results["nvidia-a100-sxm4-40gb-x1"].metrics == {"energy/j_per_output_token": 0.9, "energy/gpu_j": 70.0}
    assert results["nvidia-a100-sxm4-40gb-x1"].run_id == a100_run
    assert results["nvidia-a100-sxm4-40gb-x1"].device_name == A100
    assert results["nvidia-a100-sxm4-40gb-x1"].device_count == 1
    assert len(version.tags) == 5  # the figures went to the LoggedModel, not to the version's tags
    # The A100 run benchmarked that model: it is the run's input (its source run made it).
    assert [m.model_id for m in client.get_run(a100_run).inputs.model_inputs] == [logged_model_id(version)]

    # A newer H100 run replaces the older H100 figures, including those it did not measure.
    newer = contract_run(client, experiment_id, device_name=H100, metrics={"energy/j_per_output_token": 0.4})
    tag_version_with_results(client, name, version.version, newer)
    results = version_results(client, client.get_model_version(name, version.version))
    assert results["nvidia-h100-80gb-hbm3-x1"].metrics == {"energy/j_per_output_token": 0.4}
    assert results["nvidia-h100-80gb-hbm3-x1"].run_id == newer
    assert results["nvidia-a100-sxm4-40gb-x1"].metrics["energy/j_per_output_token"] == 0.9


def test_versions_tagged_the_old_way_still_rank(client, name, experiment_id):
    """A version registered before the figures moved to the LoggedModel (or one without a LoggedModel):
    hardware-keyed version tags; tag-best reads them, and new results for it go there too."""
    from llem_mlflow.tracking.version_tags import results_tags

    new_style = register_run(client, contract_run(client, experiment_id, metrics={"energy/j_per_output_token": 0.5}), name)
    old_run = contract_run(client, experiment_id, metrics={"energy/j_per_output_token": 0.3})
    run = client.get_run(old_run)
    old_style = client.create_model_version(
        name, source=f"runs:/{old_run}/model", run_id=old_run, tags=results_tags(run.data.tags, run.data.metrics, old_run)
    )
    ranking = best.rank_versions(client, name, "energy/j_per_output_token")
    assert [(e.version, e.value) for e in ranking.entries] == [(str(old_style.version), 0.3), (str(new_style.version), 0.5)]

    a100_run = contract_run(client, experiment_id, device_name=A100, metrics={"energy/j_per_output_token": 0.8})
    tag_version_with_results(client, name, old_style.version, a100_run)
    tags = client.get_model_version(name, old_style.version).tags
    assert float(tags["llem.hw.nvidia-a100-sxm4-40gb-x1.energy.j_per_output_token"]) == 0.8


def test_models_uri_parsing_and_missing_versions(client, name):
    assert parse_models_uri("models:/llm/3").version == "3"
    assert parse_models_uri("models:/llm@champion").alias == "champion"
    with pytest.raises(ModelLoadError, match="models:/<name>/<version>"):
        parse_models_uri("models:/llm")
    with pytest.raises(ModelLoadError, match="not found in the registry"):
        resolve_registered_model("models:/nothing-here/1", client)
    with pytest.raises(ModelLoadError, match="not found in the registry"):
        resolve_registered_model("models:/nothing-here@best", client)


def test_a_reference_version_cannot_be_resolved_to_weights(client, name, experiment_id):
    register_run(client, contract_run(client, experiment_id), name, alias="ref")
    with pytest.raises(ModelLoadError, match="holds no weights.*random:tiny"):
        resolve_registered_model(f"models:/{name}@ref", client)


def make_versions(client, name, experiment_id):
    """Four versions: three measured on an H100 (one without energy), two on an A100 (one overlaps)."""
    specs = [
        (H100, {"energy/j_per_output_token": 0.50, "throughput/output_tokens_per_s": 100.0}),
        (H100, {"energy/j_per_output_token": 0.30, "throughput/output_tokens_per_s": 90.0}),
        (H100, {"throughput/output_tokens_per_s": 150.0}),
        (A100, {"energy/j_per_output_token": 0.20, "throughput/output_tokens_per_s": 60.0}),
    ]
    for device, metrics in specs:
        register_run(client, contract_run(client, experiment_id, device_name=device, metrics=metrics), name)
    # Version 1 also measured on an A100, where it does better than version 4.
    tag_version_with_results(
        client, name, "1", contract_run(client, experiment_id, device_name=A100, metrics={"energy/j_per_output_token": 0.1})
    )


def test_tag_best_ranks_within_one_hardware(client, name, experiment_id):
    make_versions(client, name, experiment_id)
    ranking = best.tag_best(client, name, "energy/j_per_output_token", "most-efficient", device_name=H100)
    assert [(e.version, e.value) for e in ranking.entries] == [("2", 0.30), ("1", 0.50)]
    assert ranking.not_measured == ["3"]
    assert str(client.get_model_version_by_alias(name, "most-efficient").version) == "2"

    ranking = best.tag_best(client, name, "energy/j_per_output_token", "most-efficient", device_name=A100)
    assert [(e.version, e.value) for e in ranking.entries] == [("1", 0.1), ("4", 0.2)]
    assert str(client.get_model_version_by_alias(name, "most-efficient").version) == "1"

    # Throughput: higher is better.
    ranking = best.tag_best(client, name, "throughput/output_tokens_per_s", "fastest", device_name="nvidia h100 80gb hbm3")
    assert ranking.direction == "max" and [e.version for e in ranking.entries] == ["3", "1", "2"]
    assert str(client.get_model_version_by_alias(name, "fastest").version) == "3"


def test_tag_best_refuses_mixed_hardware_and_unknown_input(client, name, experiment_id):
    make_versions(client, name, experiment_id)
    with pytest.raises(TrackingError, match="several kinds of hardware.*--gpu"):
        best.rank_versions(client, name, "energy/j_per_output_token")
    with pytest.raises(TrackingError, match="no version of '.*' has results on 'Tesla T4'"):
        best.rank_versions(client, name, "energy/j_per_output_token", device_name="Tesla T4")
    with pytest.raises(TrackingError, match="--direction"):
        best.rank_versions(client, name, "quality/score", device_name=H100)
    with pytest.raises(TrackingError, match="no registered model"):
        best.rank_versions(client, "nope", "energy/j_per_output_token")


def test_cli_register_and_tag_best(client, name, experiment_id):
    runner = CliRunner()
    run_a = contract_run(client, experiment_id, metrics={"energy/j_per_output_token": 0.7})
    run_b = contract_run(client, experiment_id, metrics={"energy/j_per_output_token": 0.6})
    for run_id in (run_a, run_b, run_a):
        result = runner.invoke(cli_main, ["register", run_id, "--name", name, "--tag", "owner=me"])
        assert result.exit_code == 0, result.output
    assert f"{name} version 1" in result.output  # the re-registered run kept its version
    assert "llem.j_per_token = 0.7000 J/token" in result.output
    assert "figures: the metrics of its source model models:/m-" in result.output
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    result = runner.invoke(cli_main, ["tag-best", name, "--gpu", H100, "--alias", "greenest"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "lower is better" in lines[0]
    assert lines[2].split()[:3] == ["1", "2", "0.6000"] and lines[3].split()[:3] == ["2", "1", "0.7000"]
    assert str(client.get_model_version_by_alias(name, "greenest").version) == "2"

    result = runner.invoke(cli_main, ["tag-best", name, "--gpu", "Tesla T4"])
    assert result.exit_code == 2 and "Tesla T4" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli_main, ["register", "f" * 32, "--name", name])
    assert result.exit_code == 2 and "not found" in result.output


def test_tag_best_says_what_each_versions_energy_rests_on(client, name, experiment_id):
    measured = {"llem.energy.total_quality": "measured", "llem.energy.total_sources": "gpu"}
    estimated = {"llem.energy.total_quality": "mixed: gpu measured, cpu+ram estimated", "llem.energy.total_sources": "gpu+cpu+ram"}
    register_run(client, contract_run(client, experiment_id, metrics={"energy/j_per_output_token": 0.4}, tags=measured), name)
    register_run(client, contract_run(client, experiment_id, metrics={"energy/j_per_output_token": 0.5}, tags=estimated), name)
    ranking = best.rank_versions(client, name, "energy/j_per_output_token", device_name=H100)
    assert [(e.version, e.energy_quality) for e in ranking.entries] == [
        ("1", "GPU measured"), ("2", "GPU measured, CPU+RAM estimated"),
    ]  # fmt: skip
    text = best.format_ranking(ranking)
    assert "energy quality" in text.splitlines()[1] and "GPU measured, CPU+RAM estimated" in text
    assert "compare like with like" in text  # the two rest on different sources
    assert client.get_model_version(name, "1").tags["llem.j_per_token"] == "0.4000 J/token, GPU measured"
@pytest.mark.parametrize("alias", ["latest", "LATEST", "v3", "V12", "bad alias", "a/b", "", "x" * 256])
def test_tag_best_refuses_a_bad_alias_at_once(client, alias):
    """Before any look-up (the model does not even exist), --dry-run included; the same verdict as MLflow's."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

    from llem_mlflow.aliases import alias_problem

    with pytest.raises(MlflowException):
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    assert alias_problem(alias)
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(cli_main, ["tag-best", "no-such-model", "--alias", alias, *extra])
        assert result.exit_code == 2 and "--alias" in result.output and "no-such-model" not in result.output
    with pytest.raises(TrackingError):
        best.tag_best(client, "no-such-model", "energy/j_per_output_token", alias)


@pytest.mark.parametrize("alias", ["champion", "most-efficient", "v1beta", "latest_good", "version3"])
def test_good_aliases_pass_both_checks(alias):
    from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

    from llem_mlflow.aliases import alias_problem

    _validate_model_alias_name(alias)
    _validate_model_alias_name_reserved(alias)
    assert alias_problem(alias) is None


def test_config_refuses_a_reserved_alias_before_the_benchmark(tmp_path):
    from llem_mlflow.config.loader import validate_config
    from llem_mlflow.errors import ConfigError

    with pytest.raises(ConfigError, match="registry.alias: alias 'latest' is reserved by MLflow"):
        validate_config({"model": "random:tiny", "registry": {"model_name": "m", "alias": "latest"}}, "exp.yaml")
