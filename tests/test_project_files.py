"""MLproject, conda.yaml and pyproject.toml agree with each other and with the README."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_conda_yaml_pins_python_and_the_same_pip_dependencies():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    deps = conda["dependencies"]
    assert any(isinstance(d, str) and d.replace(" ", "").startswith("python>=3.11") for d in deps)
    pip_lists = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1
    project = _pyproject()["project"]
    # The MLproject environment also holds the `ray` extra: the sweep entry point takes -P executor=ray.
    assert sorted(pip_lists[0]) == sorted(project["dependencies"] + project["optional-dependencies"]["ray"])


def test_ray_is_an_optional_extra_that_the_tests_install():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert extras["ray"] == ["ray>=2.50,<3"]
    assert set(extras["ray"]) <= set(extras["test"])  # CI installs .[test], so the Ray tests run there
    assert not any(dep.startswith("ray") for dep in _pyproject()["project"]["dependencies"])


EXECUTION_OPTIONS = ["executor", "ray_address", "gpus_per_point", "max_concurrent"]


def test_sweep_entry_point_declares_no_empty_parameter():
    # A declared parameter with an empty default is logged as the param '' on every sweep parent.
    sweep = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["sweep"]
    assert set(sweep["parameters"]) == {"config"}
    assert not any(f"{{{name}}}" in sweep["command"] for name in EXECUTION_OPTIONS)


def test_the_sweep_cli_takes_the_execution_options_as_mlflow_run_passes_them(mlflow_store, tmp_path):
    """`mlflow run -e sweep -P max_concurrent=2` appends the undeclared parameter as `--max_concurrent 2`."""
    from helpers import invoke_cli

    from llem_mlflow.cli_sweep import sweep

    spellings = {option.name: option.opts for option in sweep.params}
    for name in EXECUTION_OPTIONS:
        assert f"--{name}" in spellings[name]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "base": {"model": "random:tiny"}, "sweep": {"max_output_tokens": [1, 2]}}))
    out = invoke_cli("sweep", str(study), "--dry-run", "--executor", "ray", "--gpus_per_point", "1", "--max_concurrent", "2").output
    assert "executor ray (local instance): 1 GPU(s)" in out and "at most 2 at once" in out


def test_mlproject_entry_points_call_the_package_cli():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert project["conda_env"] == "conda.yaml"
    main = project["entry_points"]["main"]
    assert main["parameters"]["config"]["type"] == "path"
    assert "llem_mlflow run {config}" in main["command"]
    assert "llem_mlflow sweep {config}" in project["entry_points"]["sweep"]["command"]


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q'
    assert f"    {command}\n" in readme  # one command: it installs the test extras itself
    assert ci.rstrip().splitlines()[-1] == command


def test_context_provider_entry_point_is_registered():
    entry = _pyproject()["project"]["entry-points"]["mlflow.run_context_provider"]
    module, _, attr = entry["llem"].partition(":")
    import importlib

    provider = getattr(importlib.import_module(module), attr)()
    tags = provider.tags()
    assert provider.in_context() is True
    assert tags["llem.host.cpu"]
    assert "llem.host.gpu.name" in tags
