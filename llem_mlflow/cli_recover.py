"""`llem-mlflow recover`: mark the RUNNING runs whose process died FAILED, keeping what they logged.

cli.py adds this command to the main group (which turns LlemError into a message and exit code 2).
"""

from __future__ import annotations

import click


@click.command()
@click.option("--experiment", "experiments", multiple=True, metavar="NAME_OR_ID", help="Only this experiment (repeatable; default: every experiment).")
@click.option(
    "--stale-after", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    help="A run whose heartbeat is older than this is dead (default: 10 of its beats, 5 min at the default 30 s; never under 3 beats).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="List the dead runs, change nothing.")
def recover(experiments: tuple[str, ...], stale_after: float | None, dry_run: bool) -> None:
    """Mark dead RUNNING runs FAILED ("process died"), keeping everything they logged.

    A run is dead when its process ran on this machine and is gone, or when its heartbeat
    (tag llem.heartbeat) is stale. Runs that llem-mlflow did not make are left alone.
    """
    from llem_mlflow.tracking.recover import experiment_ids, find_dead_runs, mark_dead
    from llem_mlflow.tracking.store import open_client

    client = open_client()
    dead = find_dead_runs(client, experiment_ids(client, experiments), stale_after)
    for item in dead:
        info = item.run.info
        click.echo(f"{info.run_id} ({info.run_name}, experiment {info.experiment_id}): {item.reason}")
        if not dry_run:
            mark_dead(client, item, by="llem-mlflow recover")
    verb = "found (dry run: nothing changed)" if dry_run else "marked FAILED"
    click.echo(f"{len(dead)} dead run(s) {verb}")
