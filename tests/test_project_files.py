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


def test_sweep_entry_point_passes_the_execution_options():
    sweep = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["sweep"]
    for name, option in [("executor", "--executor"), ("ray_address", "--ray-address"),
                         ("gpus_per_point", "--gpus-per-point"), ("max_concurrent", "--max-concurrent")]:  # fmt: skip
        assert sweep["parameters"][name] == {"type": "string", "default": ""}  # empty: the study file decides
        assert f"{option} {{{name}}}" in sweep["command"]


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
