"""Registry: register a run's model as a reference, hardware-keyed version tags, tag-best (real sqlite store)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow_server import contract_run

from llem_mlflow.cli import main as cli_main
from llem_mlflow.errors import ModelLoadError, TrackingError
from llem_mlflow.tracking import best
from llem_mlflow.tracking.registry import (
    find_version_for_run,
    parse_models_uri,
    register_run,
    resolve_registered_model,
    tag_version_with_results,
)
from llem_mlflow.tracking.version_tags import hardware_slug, parse_hardware_results

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

    tags = version.tags
    assert str(version.version) == "1" and version.run_id == run_id
    assert tags["llem.run_id"] == run_id
    assert tags["llem.model"] == "org/some-llm" and tags["llem.model.kind"] == "hub"
    assert tags["llem.model.revision"] == "abc123"
    assert tags["llem.device.name"] == H100 and tags["llem.device.count"] == "1"
    assert tags["llem.config_hash"] == client.get_run(run_id).data.tags["llem.config_hash"]
    assert float(tags["llem.energy.j_per_output_token"]) == 0.5
    assert float(tags["llem.throughput.output_tokens_per_s"]) == 120.0
    assert "llem.energy.gpu_j" not in tags  # not measured -> not tagged
    assert tags["team"] == "green"
    hw = tags_for(tags, "nvidia-h100-80gb-hbm3-x1")
    assert hw["device_name"] == H100 and hw["run_id"] == run_id
    assert float(hw["latency.ttft_ms_p50"]) == 20.0
    assert str(client.get_model_version_by_alias(name, "candidate").version) == "1"

    # An external LoggedModel: a reference, no weights, with the run's metrics linked to it.
    logged = client.get_logged_model(tags["llem.logged_model_id"])
    assert logged.tags["mlflow.model.isExternal"] == "true"
    assert logged.params["model"] == "org/some-llm" and logged.params["revision"] == "abc123"
    assert logged.source_run_id == run_id
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["energy/j_per_output_token"] == 0.5 and linked["memory/process_peak_rss_mb"] == 900.0
    # Linking did not add points to the run's own history.
    assert len(client.get_metric_history(run_id, "energy/j_per_output_token")) == 1


def tags_for(tags: dict[str, str], slug: str) -> dict[str, str]:
    prefix = f"llem.hw.{slug}."
    return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}


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
    assert random_version.tags["llem.model.kind"] == "random"
    assert "llem.model.revision" not in random_version.tags
    local = tmp_path / "weights"
    local.mkdir()
    local_version = register_run(client, contract_run(client, experiment_id, model=str(local)), name + "-loc")
    assert local_version.tags["llem.model.kind"] == "local"
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
    results = parse_hardware_results(client.get_model_version(name, version.version).tags)
    assert set(results) == {"nvidia-h100-80gb-hbm3-x1", "nvidia-a100-sxm4-40gb-x1"}
    assert results["nvidia-h100-80gb-hbm3-x1"].metrics["energy/j_per_output_token"] == 0.5
    assert results["nvidia-a100-sxm4-40gb-x1"].metrics == {"energy/j_per_output_token": 0.9, "energy/gpu_j": 70.0}
    assert results["nvidia-a100-sxm4-40gb-x1"].run_id == a100_run

    # A newer H100 run replaces the older H100 figures, including those it did not measure.
    newer = contract_run(client, experiment_id, device_name=H100, metrics={"energy/j_per_output_token": 0.4})
    tag_version_with_results(client, name, version.version, newer)
    results = parse_hardware_results(client.get_model_version(name, version.version).tags)
    assert results["nvidia-h100-80gb-hbm3-x1"].metrics == {"energy/j_per_output_token": 0.4}
    assert results["nvidia-a100-sxm4-40gb-x1"].metrics["energy/j_per_output_token"] == 0.9


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
    assert "llem.energy.j_per_output_token = 0.7" in result.output
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    result = runner.invoke(cli_main, ["tag-best", name, "--gpu", H100, "--alias", "greenest"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "lower is better" in lines[0]
    assert lines[2].split()[:3] == ["1", "2", "0.6"] and lines[3].split()[:3] == ["2", "1", "0.7"]
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
    assert client.get_model_version(name, "1").tags["llem.energy.total_quality"] == "measured"
