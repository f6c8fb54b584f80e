"""The `llem-mlflow` command line. Heavy imports stay inside the commands."""

from __future__ import annotations

import json
import sys

import click

from llem_mlflow import __version__
from llem_mlflow.errors import LlemError

OVERRIDE_HELP = "Override a field: -o section.field=value (repeatable; values are YAML scalars)."


class LlemGroup(click.Group):
    """Turns our errors into a message and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LlemError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=LlemGroup)
@click.version_option(__version__, prog_name="llem-mlflow")
def main() -> None:
    """Measure what LLM inference costs, and log it to MLflow."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--override", "overrides", multiple=True, help=OVERRIDE_HELP)
def validate(config: str, overrides: tuple[str, ...]) -> None:
    """Check CONFIG and print it normalised (every field, defaults filled in)."""
    from llem_mlflow.config.loader import load_config
    from llem_mlflow.config.params import config_to_yaml

    click.echo(config_to_yaml(load_config(config, overrides)), nl=False)


@main.command()
def schema() -> None:
    """Print the config's JSON Schema (for editor validation of YAML files)."""
    from llem_mlflow.config.models import ExperimentConfig

    click.echo(json.dumps(ExperimentConfig.model_json_schema(), indent=2))
