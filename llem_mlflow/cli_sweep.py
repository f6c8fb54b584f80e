"""`llem-mlflow sweep STUDY`: print the plan, then run every point as a child run.

The lead's cli.py adds this command to the main group (which turns LlemError
into a message and exit code 2). Heavy imports stay inside the function.
"""

from __future__ import annotations

import sys

import click


@click.command()
@click.argument("study_file", metavar="STUDY", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan (points, skipped points with reasons) and stop.")
@click.option("--experiment-name", default=None, help="MLflow experiment (created if missing).")
@click.option("--experiment-id", default=None, help="MLflow experiment id (instead of --experiment-name).")
@click.option("--quiet", is_flag=True, help="Do not echo each point's own output.")
def sweep(study_file: str, dry_run: bool, experiment_name: str | None, experiment_id: str | None, quiet: bool) -> None:
    """Run a study: a grid or list of experiments, one MLflow child run per point.

    Re-running the same study in the same experiment resumes it: only points
    without a FINISHED run are run. Exit code 0 when every point finished, 1
    when some failed (they are recorded; run again to retry them), 2 on a bad
    study file, 130 on Ctrl-C.
    """
    from llem_mlflow.errors import ConfigError
    from llem_mlflow.sweep.study import load_study

    if experiment_name and experiment_id:
        raise ConfigError("give --experiment-name or --experiment-id, not both")
    study = load_study(study_file)
    for line in plan_lines(study):
        click.echo(line)
    if dry_run:
        return

    from llem_mlflow.sweep.execute import run_study

    try:
        result = run_study(study, experiment_name, experiment_id, echo=click.echo, quiet=quiet)
    except KeyboardInterrupt:
        click.echo("interrupted: the study's parent run is KILLED; run the same command again to resume", err=True)
        sys.exit(130)
    failed = [r for r in result.runs if r.status != "FINISHED"]
    click.echo(f"parent run_id: {result.parent_run_id}")
    if not result.complete:
        click.echo(f"{len(failed)} point run(s) failed; run the study again to retry them", err=True)
        sys.exit(1)


def plan_lines(study) -> list[str]:
    """The plan as printed before anything runs."""
    lines = [
        f"study {study.name!r} ({study.study_hash}): {len(study.points)} point(s) x {study.repeats} repeat(s), "
        f"cycle_order {study.cycle_order}"
    ]
    for point in study.points:
        lines.append(f"  run   {point.name}  [{point.config_hash}]")
    for skip in study.skipped:
        lines.append(f"  skip  {skip.name}: {skip.reason}")
    return lines
