"""`llem-mlflow register`, `tag-best` and `compare`: the model registry and run comparison.

cli.py adds these commands to the main group (which turns LlemError into a message
and exit code 2). They talk to the MLflow server or store named by MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import click

from llem_mlflow.metrics_registry import ENERGY_PER_TOKEN


@click.command()
@click.argument("run_id")
@click.option("--name", required=True, help="Registered model name (created if missing).")
@click.option("--alias", default=None, help="Point this alias at the version.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Extra version tag (repeatable).")
def register(run_id: str, name: str, alias: str | None, tags: tuple[str, ...]) -> None:
    """Register the model that RUN_ID benchmarked, tagged with what it cost.

    No weights are copied: the version references the hub id + revision, local
    path or random: preset. Registering the same run again returns its version.
    """
    _refuse_bad_alias(alias)  # at once, before MLflow is even imported

    from llem_mlflow.tracking.registry import register_run
    from llem_mlflow.tracking.store import open_client

    version = register_run(open_client(), run_id, name, alias=alias, extra_tags=_parse_tags(tags))
    click.echo(f"{name} version {version.version}" + (f" (alias {alias!r})" if alias else ""))
    for key in sorted(version.tags):
        if key.startswith("llem.") and not key.startswith("llem.hw."):
            click.echo(f"  {key} = {version.tags[key]}")
    click.echo(f"  figures: the metrics of its source model {version.source}")


@click.command("tag-best")
@click.argument("name")
@click.option("--metric", default=ENERGY_PER_TOKEN, show_default=True, help="Metric to rank versions by.")
@click.option("--gpu", "device_name", default=None, help='Device name, e.g. "NVIDIA H100 80GB HBM3" (the CPU model for CPU runs).')
@click.option("--gpu-count", "device_count", type=int, default=None, help="Only results measured on this many devices.")
@click.option("--alias", default="most-efficient", show_default=True, help="Alias to move to the best version.")
@click.option(
    "--direction", type=click.Choice(["min", "max"]), default=None,
    help="min: lower is better; max: higher is better (default: from the metric group; throughput max, the rest min).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the ranking, move no alias.")
def tag_best(
    name: str, metric: str, device_name: str | None, device_count: int | None, alias: str, direction: str | None, dry_run: bool
) -> None:
    """Move ALIAS to the version of NAME with the best METRIC on one kind of hardware; print the ranking."""
    _refuse_bad_alias(alias)  # at once (--dry-run included), before MLflow is even imported

    from llem_mlflow.tracking import best
    from llem_mlflow.tracking.store import open_client

    client = open_client()
    if dry_run:
        ranking = best.rank_versions(client, name, metric, device_name, device_count, direction)
    else:
        ranking = best.tag_best(client, name, metric, alias, device_name, device_count, direction)
    click.echo(best.format_ranking(ranking))


@click.command()
@click.argument("run_ids", nargs=-1)
@click.option("--experiment", default=None, help="Compare every llem-mlflow run of this experiment.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]), default="table", show_default=True)
@click.option("--wide", is_flag=True, help="Table: every column with full names (default: what fits 100 characters).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write the plot (see --x-axis) to this PNG.")
@click.option(
    "--x-axis", type=click.Choice(["throughput", "request-rate"]), default="throughput", show_default=True,
    help="The plot's x axis: throughput (energy per token, Pareto front) or request-rate (online runs: energy and latency against load).",
)  # fmt: skip
@click.option("--log-to-run", is_flag=True, help="Also log the table and plot to a new summary run.")
@click.option("--summary-run", default=None, metavar="NAME", help="Name of the summary run (implies --log-to-run).")
def compare(
    run_ids: tuple[str, ...],
    experiment: str | None,
    fmt: str,
    wide: bool,
    plot_path: str | None,
    x_axis: str,
    log_to_run: bool,
    summary_run: str | None,
) -> None:
    """Compare runs (RUN_ID ... or --experiment NAME): params that differ, key metrics with units."""
    from llem_mlflow.tracking import compare as cmp
    from llem_mlflow.tracking.store import open_client

    client = open_client()
    comparison = cmp.load_comparison(client, list(run_ids), experiment)
    click.echo(cmp.render(comparison, fmt, wide), nl=False)
    if plot_path:
        cmp.plot(comparison, plot_path, x_axis)
        click.echo(f"plot: {plot_path}", err=True)
    if log_to_run or summary_run:
        experiment_id = client.get_experiment_by_name(experiment).experiment_id if experiment else None
        run_id = cmp.log_summary_run(client, comparison, summary_run or "llem-compare", experiment_id, plot_path)
        click.echo(f"summary run: {run_id}", err=True)


def _refuse_bad_alias(alias: str | None) -> None:
    from llem_mlflow.aliases import alias_problem

    problem = alias_problem(alias) if alias is not None else None
    if problem:
        raise click.BadParameter(problem, param_hint="--alias")


def _parse_tags(tags: tuple[str, ...]) -> dict[str, str]:
    parsed = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--tag")
        parsed[key] = value
    return parsed
