"""`llem-mlflow validate` and `schema`: exit codes, output, no traceback, fast start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from llem_mlflow import __version__
from llem_mlflow.cli import main
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.config.params import config_hash

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "transformers", "mlflow", "codecarbon", "matplotlib", "pandas")

GOOD = """\
model: random:tiny
max_output_tokens: 16
decoder: {preset: deterministic, min_new_tokens: 16}
pytorch: {batch_size: 2, device_map: auto, max_memory: {0: 1GiB}}
"""
BAD = """\
model: random:tiny
decoder:
  temprature: 0.5
pytorch:
  batch_size: 0
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# --- validate via CliRunner ------------------------------------------------------------------


def test_validate_prints_the_normalised_config(tmp_path):
    result = invoke("validate", str(write(tmp_path, GOOD)))
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    cfg = load_config(tmp_path / "exp.yaml")
    assert printed == cfg.model_dump(mode="json")
    # every field, defaults filled in: the preset expanded, unset fields as null
    assert printed["decoder"]["temperature"] == 0.0 and printed["decoder"]["do_sample"] is False
    assert printed["pytorch"]["trust_remote_code"] is None and printed["registry"] is None


def test_validate_output_is_itself_a_valid_equal_config(tmp_path):
    first = invoke("validate", str(write(tmp_path, GOOD)))
    again = invoke("validate", str(write(tmp_path, first.stdout, "normalised.yaml")))
    assert again.exit_code == 0 and again.stdout == first.stdout
    assert load_config(tmp_path / "normalised.yaml") == load_config(tmp_path / "exp.yaml")


def test_validate_applies_overrides(tmp_path):
    result = invoke("validate", str(write(tmp_path, GOOD)), "-o", "decoder.top_k=7", "--override", "registry.model_name=b")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["decoder"]["top_k"] == 7 and printed["registry"]["model_name"] == "b"


def test_validate_bad_config_exits_2_with_every_problem(tmp_path):
    result = invoke("validate", str(write(tmp_path, BAD)))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert 'decoder.temprature: unknown field - did you mean "decoder.temperature"?' in result.stderr
    assert "pytorch.batch_size: Input should be greater than or equal to 1 (got 0)" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["missing.yaml"], "not found"), (["exp.yaml", "-o", "nonsense"], "must look like section.field=value")],
)
def test_validate_input_errors_exit_2(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, GOOD)
    result = invoke("validate", *args)
    assert result.exit_code == 2 and expected in result.stderr and result.stdout == ""


def test_validate_without_argument_is_a_usage_error():
    result = invoke("validate")
    assert result.exit_code == 2 and "Missing argument" in result.stderr


STUDY = """\
name: bs-study
base: {model: random:tiny, max_output_tokens: 8}
sweep:
  pytorch.batch_size: [1, 4]
"""


def test_validate_many_files_one_line_each(tmp_path):
    files = sorted(str(p) for p in (REPO / "examples").glob("*.yaml"))
    result = invoke("validate", *files)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(": ok (")[0] for line in lines] == files
    assert any(line.endswith("(study 'quickstart-batch-size', 7 point(s))") for line in lines)
    assert any("quickstart.yaml: ok (experiment config, hash " in line for line in lines)


def test_validate_reports_every_bad_file_and_exits_2(tmp_path):
    good, bad = write(tmp_path, GOOD), write(tmp_path, BAD, "bad.yaml")
    country = write(tmp_path, "model: random:tiny\nenergy: {country_iso_code: XYZ}\n", "country.yaml")
    result = invoke("validate", str(bad), str(good), str(country))
    assert result.exit_code == 2
    assert result.stdout == f"{good}: ok (experiment config, hash {config_hash(load_config(good))})\n"
    assert "pytorch.batch_size: Input should be greater than or equal to 1" in result.stderr
    # The carbon country is checked as `run` checks it (CodeCarbon's table), without importing CodeCarbon.
    assert "energy.country_iso_code: 'XYZ' is not a country in CodeCarbon's energy-mix table" in result.stderr
    assert result.stderr.rstrip().endswith("2 of 3 file(s) with problems")


def test_validate_recognises_a_study_and_prints_its_plan_like_sweep_dry_run(tmp_path):
    from llem_mlflow.cli_sweep import plan_lines
    from llem_mlflow.sweep.study import load_study

    path = write(tmp_path, STUDY, "study.yaml")
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == plan_lines(load_study(path))
    assert invoke("sweep", str(path), "--dry-run").stdout == result.stdout
    refused = invoke("validate", str(path), "-o", "n_trials=2")
    assert refused.exit_code == 2 and "is a study file: -o overrides apply to experiment configs" in refused.stderr


def test_validate_reports_all_of_a_study_files_problems_at_once(tmp_path):
    text = STUDY.replace("pytorch.batch_size: [1, 4]", "pytorch.batchsize: [1, 4]\n  decoder.top_p: 0.5") + "cycle_order: random\nrepeats: 0\nbogus: 1\n"
    result = invoke("validate", str(write(tmp_path, text, "study.yaml")))
    assert result.exit_code == 2
    assert "5 problems in the study file" in result.stderr
    for needle in (
        "unknown study key 'bogus'",
        'sweep.pytorch.batchsize: \'pytorch.batchsize\' is not a config field - did you mean "pytorch.batch_size"?',
        "sweep.decoder.top_p: must be a non-empty list of values",
        "cycle_order is 'random'",
        "repeats must be an integer >= 1, got 0",
    ):
        assert needle in result.stderr, needle


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


# --- schema --------------------------------------------------------------------------------------


def test_schema_is_json_schema_of_every_field():
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["model"]
    assert set(schema["properties"]) == set(ExperimentConfig.model_fields)
    defs = schema["$defs"]
    assert set(defs["PyTorchConfig"]["properties"]) == set(ExperimentConfig.model_fields["pytorch"].annotation.model_fields)
    for name, section in defs.items():
        assert section.get("additionalProperties") is False, name
    assert defs["DecoderConfig"]["properties"]["top_p"]["maximum"] == 1.0


@pytest.mark.parametrize(
    ("data", "valid"),
    [({"model": "random:tiny", "decoder": {"top_p": 0.9}, "pytorch": {"attn_implementation": "flash_attention_3"},
       "registry": {"model_name": "b"}, "tags": {"a": "b"}}, True),
     ({"model": "m", "pytorch": {"batch_sise": 2}}, False),
     ({"model": "m", "decoder": {"top_p": 2}}, False),
     ({"model": "m", "precision": "fp8"}, False),
     ({"model": "m", "pytorch": {"batch_size": "two"}}, False),
     ({"decoder": {}}, False)],
)  # fmt: skip
def test_schema_validates_configs(data, valid):
    schema = json.loads(invoke("schema").stdout)
    errors = schema_errors(data, schema, schema)
    assert (errors == []) is valid, errors


def test_schema_accepts_the_normalised_output_of_validate(tmp_path):
    schema = json.loads(invoke("schema").stdout)
    printed = yaml.safe_load(invoke("validate", str(write(tmp_path, GOOD))).stdout)
    # YAML keys of max_memory are text in JSON; the schema must take what validate prints.
    assert schema_errors(printed, schema, schema) == []


def schema_errors(value: Any, node: dict, root: dict, path: str = "$") -> list[str]:
    """A small JSON Schema checker for the keywords pydantic emits (jsonschema is not a dependency)."""
    if "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, path)
    if "anyOf" in node:
        options = [schema_errors(value, option, root, path) for option in node["anyOf"]]
        return [] if any(not o for o in options) else [f"{path}: matches no anyOf option {options}"]
    errors: list[str] = []
    kinds = {"object": dict, "string": str, "boolean": bool, "null": type(None), "array": list}
    kind = node.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = kind is None or isinstance(value, kinds[kind])
    if not ok:
        return [f"{path}: {value!r} is not {kind}"]
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} not in {node['enum']}")
    if "const" in node and value != node["const"]:
        errors.append(f"{path}: {value!r} != {node['const']!r}")
    for key, check in (("minimum", lambda v, b: v >= b), ("maximum", lambda v, b: v <= b),
                       ("exclusiveMinimum", lambda v, b: v > b), ("exclusiveMaximum", lambda v, b: v < b)):  # fmt: skip
        if key in node and not check(value, node[key]):
            errors.append(f"{path}: {value!r} breaks {key} {node[key]}")
    if "minLength" in node and len(value) < node["minLength"]:
        errors.append(f"{path}: shorter than {node['minLength']}")
    if "pattern" in node and not re.search(node["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {node['pattern']}")
    if isinstance(value, dict):
        properties = node.get("properties", {})
        errors += [f"{path}.{k}: required" for k in node.get("required", []) if k not in value]
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], root, f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: not allowed")
            elif isinstance(node.get("additionalProperties"), dict):
                errors += schema_errors(item, node["additionalProperties"], root, f"{path}.{key}")
    return errors


# --- a real process: console entry point, exit codes, no traceback, fast start --------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "llem_mlflow", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_subprocess_validate_good_file(tmp_path):
    result = run_cli("validate", str(write(tmp_path, GOOD)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == load_config(tmp_path / "exp.yaml").model_dump(mode="json")


def test_subprocess_validate_bad_file_exits_2_without_traceback(tmp_path):
    result = run_cli("validate", str(write(tmp_path, BAD)), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: {tmp_path / 'exp.yaml'}: 2 problem(s) in the config:")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_subprocess_yaml_syntax_error_exits_2_without_traceback(tmp_path):
    result = run_cli("validate", str(write(tmp_path, "model: m\n  x: [\n")), cwd=tmp_path)
    assert result.returncode == 2 and "invalid YAML at line 2" in result.stderr and "Traceback" not in result.stderr


def test_validate_and_schema_import_no_heavy_library(tmp_path):
    write(tmp_path, STUDY, "study.yaml")
    write(tmp_path, "model: random:tiny\nenergy: {country_iso_code: FRA}\n", "country.yaml")
    script = (
        "import sys\n"
        "from llem_mlflow.cli import main\n"
        "for args in (['validate', sys.argv[1], 'study.yaml', 'country.yaml'], ['schema'], ['--help']):\n"
        "    try:\n"
        "        main(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(write(tmp_path, GOOD))], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"


# --- docs/config.md stays true ----------------------------------------------------------------------


def doc_blocks(kind: str) -> list[str]:
    text = (REPO / "docs" / "config.md").read_text()
    return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)


def test_docs_example_config_is_valid(tmp_path):
    example = doc_blocks("yaml")[0]
    result = invoke("validate", str(write(tmp_path, example)))
    assert result.exit_code == 0, result.output


def test_docs_error_message_is_what_validate_prints(tmp_path, monkeypatch):
    bad = doc_blocks("yaml")[-1]  # the last yaml block: the one the message below it comes from
    documented = doc_blocks("text")[0]
    monkeypatch.chdir(tmp_path)
    write(tmp_path, bad, "bad-config.yaml")
    result = run_cli("validate", "bad-config.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == documented
