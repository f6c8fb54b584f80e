"""The `llem-mlflow` command line. Heavy imports stay inside the commands."""

from __future__ import annotations

import json
import sys

import click

from llem_mlflow import __version__
from llem_mlflow.errors import LlemError

OVERRIDE_HELP = "Override a field: -o section.field=value (repeatable; values are YAML scalars)."
_finished_run = False  # set once `run` ended its MLflow run and removed its files: see console_main


class LlemGroup(click.Group):
    """Turns our errors into a message and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LlemError as exc:
            from llem_mlflow.redact import redact_text

            click.echo(f"Error: {redact_text(str(exc))}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=LlemGroup)
@click.version_option(__version__, prog_name="llem-mlflow")
def main() -> None:
    """Measure what LLM inference costs, and log it to MLflow."""


@main.command()
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--override", "overrides", multiple=True, help=OVERRIDE_HELP + " Experiment configs only.")
def validate(files: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Check experiment configs and study files without running anything.

    One file: an experiment config is printed normalised (every field, defaults
    filled in); a study file (sweep:, experiments:, base:) prints its plan, as
    `sweep --dry-run` does. Several files: one line per file. Every problem of
    every file is reported; exit status 2 when any file has one.
    """
    from llem_mlflow.validate import check_file

    failed = 0
    for path in files:
        try:
            checked = check_file(path, overrides)
        except LlemError as exc:
            if len(files) == 1:
                raise
            click.echo(f"Error: {exc}", err=True)
            failed += 1
            continue
        click.echo(checked.text if len(files) == 1 else f"{path}: ok ({checked.summary})", nl=len(files) > 1)
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) with problems", err=True)
        sys.exit(2)


@main.command()
def schema() -> None:
    """Print the config's JSON Schema (for editor validation of YAML files)."""
    from llem_mlflow.config.models import ExperimentConfig

    click.echo(json.dumps(ExperimentConfig.model_json_schema(), indent=2))


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--override", "overrides", multiple=True, help=OVERRIDE_HELP)
@click.option("--overrides", "overrides_text", default="", help="Overrides as one string 'a.b=1 c.d=x' (MLproject).")
@click.option("--experiment-name", default=None, help="MLflow experiment (created if missing).")
@click.option("--experiment-id", default=None, help="MLflow experiment id (instead of a name).")
@click.option("--run-name", default=None, help="MLflow run name.")
@click.option("--parent-run-id", default=None, help="Make the run a child of this run (sweeps).")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
def run(
    config: str,
    overrides: tuple[str, ...],
    overrides_text: str,
    experiment_name: str | None,
    experiment_id: str | None,
    run_name: str | None,
    parent_run_id: str | None,
    quiet: bool,
) -> None:
    """Benchmark the experiment in CONFIG into one MLflow run.

    Inside `mlflow run` it logs into the run that MLFLOW_RUN_ID names.
    """
    import shlex

    from llem_mlflow.launch import launch

    global _finished_run
    all_overrides = tuple(shlex.split(overrides_text)) + overrides
    code = launch(config, all_overrides, experiment_name, experiment_id, run_name, parent_run_id, quiet, overrides_text)
    _finished_run = True
    sys.exit(code)


def console_main() -> None:
    """The `llem-mlflow` and `python -m llem_mlflow` entry point: `main`, then, after a `run` whose MLflow
    run is ended and whose files are written and removed, an exit without the interpreter's teardown.
    Freeing torch and transformers module by module took 1.2-1.3 s of a 10 s quickstart (issue 10);
    nothing of ours is left to it. `main` itself (click's CliRunner in the tests) never exits early."""
    try:
        main()
    except SystemExit as exc:
        if not _finished_run:
            raise
        import logging
        import os

        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _add_commands() -> None:
    # Commands that live in their own modules (each imports its heavy parts lazily).
    from llem_mlflow.cli_recover import recover
    from llem_mlflow.cli_registry import compare, register, tag_best
    from llem_mlflow.cli_sweep import sweep

    for command in (register, tag_best, compare, sweep, recover):
        main.add_command(command)


_add_commands()
