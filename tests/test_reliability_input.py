"""Bad input (docs/reliability.md, "Bad input" rows): a message naming the file or field and the
fix, exit code 2, no traceback, and never a run left RUNNING.

Config errors are found before any run exists, so `llem-mlflow run` creates none; errors found
later (model, dataset) end the run it created FAILED with the error as tag and artifact. Under
`mlflow run` the run exists from the start, so every bad input ends it FAILED.

Most cases call `launch()` in-process (the same code the CLI calls, much faster); a few go
through the real CLI and the real `mlflow run` in subprocesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from helpers import (
    all_runs,
    assert_failed_with,
    llem,
    mlflow_run,
    only_run,
    write_config,
)

from llem_mlflow.launch import EXIT_BAD_INPUT, launch


@dataclass
class BadInput:
    name: str
    write: Callable[[Path], Path]  # tmp dir -> config path
    needles: tuple[str, ...]  # what the message must say: the field/file and the fix
    creates_run: bool  # False: refused before `llem-mlflow run` creates a run


def _text(body: str) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / "exp.yaml"
        path.write_text(body)
        return path

    return write


def _config(**sections) -> Callable[[Path], Path]:
    return lambda tmp: write_config(tmp / "exp.yaml", **sections)


def _dataset_file(content: str | None, **dataset) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        data = tmp / "prompts.jsonl"
        if content is not None:
            data.write_text(content)
        return write_config(tmp / "exp.yaml", dataset={"source": str(data), **dataset})

    return write


CASES = [
    BadInput("missing_config_file", lambda tmp: tmp / "nope.yaml", ("nope.yaml", "not found", "check the path"), False),
    BadInput("invalid_yaml", _text("model: random:tiny\npytorch: {batch_size: 2\n"), ("exp.yaml", "invalid YAML at line"), False),
    BadInput("unknown_field", _config(pytorch={"batchsize": 2}), ("pytorch.batchsize", 'did you mean "pytorch.batch_size"'), False),
    BadInput("mistyped_field", _config(pytorch={"batch_size": "two"}), ("pytorch.batch_size", "valid integer", "'two'"), False),
    BadInput("out_of_range", _config(decoder={"top_p": 1.5}), ("decoder.top_p", "less than or equal to 1"), False),
    BadInput(
        "malformed_max_memory",
        _config(pytorch={"device_map": "auto", "max_memory": {0: "10 gigs"}}),
        ("pytorch.max_memory", "is not a size", "e.g. '10GiB'"),
        False,
    ),
    BadInput(
        "models_uri_not_found",
        _config(model="models:/no-such-model/3"),
        ("models:/no-such-model/3", "not found in the registry", "MLFLOW_TRACKING_URI"),
        False,
    ),
    BadInput(
        "hub_model_offline_or_not_found",
        _config(model="no-such-org/no-such-model"),
        ("no-such-org/no-such-model", "cannot load", "Fix:"),
        True,
    ),
    BadInput("local_model_path_missing", _config(model="./no-such-model-dir"), ("no-such-model-dir", "local path not found", "random:tiny"), False),
    BadInput("unknown_random_preset", _config(model="random:huge"), ("random:huge", "unknown random preset", "random:tiny"), False),
    BadInput(
        "lengths_beyond_the_context_window",
        _config(model="random:gpt2", max_input_tokens=512, max_output_tokens=1000),
        ("max_input_tokens (512) + max_output_tokens (1000)", "context window", "1024 tokens", "n_positions", "Fix: lower"),
        False,
    ),
    BadInput("absurd_max_output_tokens", _config(max_output_tokens=10**12), ("max_output_tokens", "less than or equal to"), False),
    BadInput("absurd_batch_size", _config(pytorch={"batch_size": 10**20}), ("pytorch.batch_size", "less than or equal to"), False),
    BadInput(
        "yaml_alias_bomb",
        _text("model: random:tiny\npassthrough_kwargs:\n  a: &a [x,x,x,x,x,x,x,x,x]\n"
              + "".join(f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))),
        ("exp.yaml", "expands to more than", "aliases"),
        False,
    ),
    BadInput("dataset_file_missing", _dataset_file(None), ("dataset.source", "prompts.jsonl", "file not found"), False),
    BadInput(
        "dataset_line_malformed",
        _dataset_file('{"prompt": "fine"}\n\n{"prompt": broken}\n'),  # the file's line 3 (the parser says line 1)
        ("dataset.source", "line 3, column 12", "invalid JSON"),
        True,
    ),
    BadInput("dataset_file_empty", _dataset_file(""), ("dataset.source", "no rows", "add prompts"), True),
    BadInput(
        "dataset_lacks_column",
        _dataset_file('{"question": "why?"}\n'),
        ("dataset.source", "neither a 'prompt' nor a 'text' column", "set dataset.column"),
        True,
    ),
    BadInput(
        "dataset_named_column_missing",
        _dataset_file('{"question": "why?"}\n', column="prompt_text"),
        ("no column 'prompt_text'", "columns: question", "set dataset.column"),
        True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_through_llem_run(case: BadInput, mlflow_store, tmp_path, capsys):
    path = case.write(tmp_path)
    code = launch(str(path), experiment_name="bad", quiet=True)
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert "Traceback" not in out + err
    for needle in case.needles:
        assert needle in err, (needle, err)
    runs = all_runs()
    if not case.creates_run:
        assert runs == []  # refused before a run was made: nothing half-done in the store
        return
    assert len(runs) == 1
    assert_failed_with(runs[0], *case.needles)
    assert not any(r.info.status == "RUNNING" for r in runs)


BY_NAME = {case.name: case for case in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["missing_config_file", "dataset_lacks_column"])
def test_bad_input_through_the_real_cli(name, mlflow_store, tmp_path):
    """The real command line: exit 2, the message on stderr, no traceback anywhere."""
    case = BY_NAME[name]
    result = llem("run", str(case.write(tmp_path)), "--quiet")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    for needle in case.needles:
        assert needle in result.stderr
    if case.creates_run:
        assert_failed_with(only_run(), *case.needles)
    else:
        assert all_runs() == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["invalid_yaml", "models_uri_not_found", "dataset_file_empty"])
def test_bad_input_under_mlflow_run_ends_the_run_failed(name, mlflow_store, project_copy, tmp_path):
    """Under `mlflow run` the run exists before the config is read: it must end FAILED, never RUNNING."""
    case = BY_NAME[name]
    result = mlflow_run(project_copy, "-P", f"config={case.write(tmp_path)}", "--experiment-name", "bad")
    assert result.returncode != 0
    ours = result.stderr.split("mlflow.exceptions")[0]  # mlflow run prints its own traceback after ours
    assert "Traceback" not in ours
    for needle in case.needles:
        assert needle in result.stderr
    assert_failed_with(only_run(), *case.needles)
