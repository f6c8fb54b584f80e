"""`llem-mlflow sweep STUDY`: print the plan, then run every point as a child run.

The lead's cli.py adds this command to the main group (which turns LlemError
into a message and exit code 2). Heavy imports stay inside the function.
"""

from __future__ import annotations

import signal
import sys

import click


@click.command()
@click.argument("study_file", metavar="STUDY", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan (points, skipped points with reasons) and stop.")
@click.option("--experiment-name", default=None, help="MLflow experiment (created if missing).")
@click.option("--experiment-id", default=None, help="MLflow experiment id (instead of --experiment-name).")
@click.option("--quiet", is_flag=True, help="Do not echo each point's own output.")
@click.option("--executor", default="", help="local (one point at a time) or ray (points in parallel on a Ray cluster); default: the study's execution.executor.")
@click.option("--ray-address", "--ray_address", default="", help="Ray cluster to run on (auto, HOST:PORT, ray://HOST:10001); default: a local Ray instance.")
@click.option("--gpus-per-point", "--gpus_per_point", default="", help="Whole GPUs each point gets on Ray (0: none).")
@click.option("--max-concurrent", "--max_concurrent", default="", help="At most this many points at once on Ray.")
def sweep(
    study_file: str,
    dry_run: bool,
    experiment_name: str | None,
    experiment_id: str | None,
    quiet: bool,
    executor: str,
    ray_address: str,
    gpus_per_point: str,
    max_concurrent: str,
) -> None:
    """Run a study: a grid or list of experiments, one MLflow child run per point.

    Re-running the same study in the same experiment resumes it: only points
    without a FINISHED run are run. Exit code 0 when every point finished, 1
    when some failed (they are recorded; run again to retry them), 2 on a bad
    study file, 130 on Ctrl-C. Options left out (or empty) keep the study
    file's `execution:` settings. The underscore spellings (--ray_address ...) are
    what `mlflow run -e sweep -P ray_address=...` passes.
    """
    import dataclasses
    import os

    from llem_mlflow.errors import ConfigError
    from llem_mlflow.sweep.execution import check_tracking_reachable, with_options
    from llem_mlflow.sweep.study import load_study

    if experiment_name and experiment_id:
        raise ConfigError("give --experiment-name or --experiment-id, not both")
    study = load_study(study_file)
    execution = with_options(study.execution, executor, ray_address, gpus_per_point, max_concurrent)
    study = dataclasses.replace(study, execution=execution)
    for line in plan_lines(study):
        click.echo(line)
    if study.execution.executor == "ray":
        from mlflow import get_tracking_uri

        check_tracking_reachable(study.execution, get_tracking_uri(), os.environ.get("RAY_ADDRESS"))
    if dry_run:
        return

    from llem_mlflow.sweep.execute import run_study

    # SIGTERM (`ray job stop`, a batch scheduler) stops the study like Ctrl-C: cancelled points end KILLED.
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_study(study, experiment_name, experiment_id, echo=click.echo, quiet=quiet)
    except KeyboardInterrupt:
        click.echo("interrupted: the study's parent run is KILLED; run the same command again to resume", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    failed = [r for r in result.runs if r.status != "FINISHED"]
    click.echo(f"parent run_id: {result.parent_run_id}")
    if not result.complete:
        click.echo(f"{len(failed)} point run(s) failed; run the study again to retry them", err=True)
        sys.exit(1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


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
    if study.execution.executor != "local":
        lines.append(study.execution.describe())
    return lines
