"""`llem-mlflow sweep --dry-run`: the plan, printed before anything runs."""

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from llem_mlflow.cli_sweep import sweep
from llem_mlflow.errors import ConfigError

STUDY = textwrap.dedent("""
    name: demo
    base: {model: "random:tiny", max_output_tokens: 4}
    sweep:
      pytorch.batch_size: [1, 0]
      precision: [fp32]
    cycle_order: interleaved
    repeats: 3
""")


def test_dry_run_prints_points_and_skips_and_touches_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "study.yaml").write_text(STUDY)
    result = CliRunner().invoke(sweep, [str(tmp_path / "study.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("study 'demo' (") and "1 point(s) x 3 repeat(s), cycle_order interleaved" in lines[0]
    assert lines[1].startswith("  run   batch_size=1,precision=fp32  [")
    assert lines[2].startswith("  skip  batch_size=0,precision=fp32: pytorch.batch_size: Input should be greater than or equal to 1")
    assert len(lines) == 3
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_study_is_a_config_error_naming_the_key(tmp_path):
    (tmp_path / "study.yaml").write_text(STUDY.replace("precision:", "precison:"))
    result = CliRunner().invoke(sweep, [str(tmp_path / "study.yaml"), "--dry-run"])
    assert isinstance(result.exception, ConfigError)
    assert "'precison' is not a config field - did you mean \"precision\"?" in str(result.exception)


def test_both_experiment_options_are_refused(tmp_path):
    (tmp_path / "study.yaml").write_text(STUDY)
    result = CliRunner().invoke(sweep, [str(tmp_path / "study.yaml"), "--experiment-name", "a", "--experiment-id", "1"])
    assert isinstance(result.exception, ConfigError)


def test_main_cli_exits_2_on_a_bad_study(tmp_path):
    from llem_mlflow.cli import main

    if "sweep" not in main.commands:
        pytest.skip("the sweep command is not registered in cli.py yet")
    (tmp_path / "study.yaml").write_text("base: {model: x}\nsweep:\n  pytorch.batch_size: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "llem_mlflow", "sweep", str(tmp_path / "study.yaml"), "--dry-run"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "sweep.pytorch.batch_size: must be a non-empty list" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_example_study_is_valid():
    from pathlib import Path

    from llem_mlflow.sweep.study import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "examples" / "sweep.yaml")
    assert len(study.points) == 7 and study.skipped == []
    assert study.points[-1].name == "short-outputs" and study.points[-1].config.max_output_tokens == 8
