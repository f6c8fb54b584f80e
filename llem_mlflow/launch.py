"""`llem-mlflow run`: config -> MLflow run, with a truthful end status.

Outcomes (docs/reliability.md):
- success: run FINISHED, exit 0;
- bad input (LlemError): run FAILED (if one exists yet), error as tag + artifact, exit 2;
- a fault mid-run (e.g. CUDA out of memory): run FAILED, finished batches kept, exit 1;
- Ctrl-C / SIGTERM: run KILLED, partial data and energy so far logged, exit 130.
A run is never left RUNNING.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import traceback
from typing import Any

from llem_mlflow.errors import LlemError

EXIT_OK, EXIT_FAULT, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same path as Ctrl-C."""


def launch(
    config_path: str,
    overrides: tuple[str, ...] = (),
    experiment_name: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    quiet: bool = False,
    recorded_overrides: str = "",
    hardware: Any = None,
) -> int:
    """`recorded_overrides`: the `--overrides` text, which `mlflow run` stores as a param (MLproject).
    `hardware` (llem_mlflow.bench.device.Hardware) stands in for the machine's GPUs: tests run the
    whole pipeline on a fake GPU through it (None: the real ones)."""
    from llem_mlflow import lifeline
    from llem_mlflow.bench.preflight import check_inputs
    from llem_mlflow.config.loader import load_config
    from llem_mlflow.config.params import config_to_params, config_to_yaml
    from llem_mlflow.runner import Measurement, measurement_for, redacted_config
    from llem_mlflow.tracking import naming
    from llem_mlflow.tracking import reporter as jobs
    from llem_mlflow.redact import check_recorded_overrides, redact_text
    from llem_mlflow.tracking.reporter import MlflowReporter
    from llem_mlflow.tracking.heartbeat import interval_s as heartbeat_interval_s
    from llem_mlflow.tracking.store import check_tracking_server_from_environment

    reporter: MlflowReporter | None = None
    measurement: Measurement | None = None
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupted)
    if lifeline.wanted():
        lifeline.stop_with_parent()  # SIGTERM (-> KILLED) when `mlflow run` or the sweep dies
    try:
        reporter = MlflowReporter()  # MLflow starts in its own process while we read the config
        check_tracking_server_from_environment()  # a server that is down or refuses us: exit 2 in seconds
        heartbeat_interval_s()  # a bad LLEM_HEARTBEAT_S is bad input, refused before a run exists
        if os.environ.get("MLFLOW_RUN_ID"):
            # Under `mlflow run` the run exists already: resume it first so that bad input marks it FAILED.
            reporter.open()
            check_recorded_overrides(recorded_overrides)  # a literal secret there is in a param now
        cfg = load_config(config_path, overrides)  # refuses a carbon country CodeCarbon cannot price, too
        check_inputs(cfg)  # random: preset, dataset and model paths, context window: before a run exists
        _check_devices(cfg)
        model_path, registered_version = _resolve_registered_model(cfg.model)
        name = naming.run_name_for(cfg, config_path, run_name)
        if reporter.opened:  # the run `mlflow run` made: named at random unless --run-name was given
            reporter.call(naming.name_existing_run, name, run_name is not None, cfg.experiment)
        else:  # only now: a config error must create no run
            experiment_name = naming.experiment_for(cfg, experiment_name, experiment_id)
            reporter.open(experiment_name=experiment_name, experiment_id=experiment_id, run_name=name, parent_run_id=parent_run_id)
        logged = redacted_config(cfg)
        reporter.call(jobs.log_config, config_to_params(logged), config_to_yaml(logged))
        reporter.call(jobs.preload_plotting)
        measurement = measurement_for(cfg, quiet=quiet, model_path=model_path, hardware=hardware, listener=reporter)
        report = measurement.run()
        reporter.finish(report)
        if registered_version is not None:
            reporter.call(_tag_registered_version, registered_version)
        if cfg.registry is not None:
            reporter.call(_register, cfg.registry)
        reporter.end("FINISHED")
        _say(_headline(report.metrics, report.tags), quiet)
        return EXIT_OK
    except KeyboardInterrupt:
        _fail(reporter, measurement, "KILLED", "interrupted (Ctrl-C or SIGTERM) - partial results kept")
        _say("Interrupted: the run is marked KILLED; what was measured so far is logged.", quiet=False, err=True)
        return EXIT_INTERRUPTED
    except LlemError as exc:  # bad input; or a data-parallel worker's failure (its traceback as detail)
        message = redact_text(str(exc))
        _fail(reporter, measurement, "FAILED", message, detail=getattr(exc, "detail", None))
        _say(f"Error: {message}", quiet=False, err=True)
        return exc.exit_code
    except Exception as exc:  # a fault mid-run: keep what finished, say what happened
        message = redact_text(fault_message(exc))
        _fail(reporter, measurement, "FAILED", message, detail=redact_text(traceback.format_exc()))
        _say(f"Error: {message}", quiet=False, err=True)
        return EXIT_FAULT
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if reporter is not None:
            reporter.close()
        if measurement is not None:
            measurement.cleanup()


def fault_message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if type(exc).__name__ == "OutOfMemoryError":
        return f"out of memory during generation ({text}). Hint: lower pytorch.batch_size or max_output_tokens, or quantize (pytorch.load_in_4bit)"
    if f"[Errno {errno.ENOSPC}]" in text:  # also when the reporter's process hit it
        return f"{text}. Fix: free space on that disk (df -h), or point TMPDIR / the experiment's artifact location elsewhere"
    return text


def _fail(reporter: Any, measurement: Any, status: str, message: str, detail: str | None = None) -> None:
    """Keep what finished, log the error and end the run; never raises (the run must not stay RUNNING)."""
    if reporter is None:
        return
    report = None
    if measurement is not None:
        try:
            report = measurement.partial(message)
        except Exception as exc:
            print(f"warning: could not gather the partial results: {exc}", file=sys.stderr)
    reporter.fail(report, status, message, detail)


def _check_devices(cfg: Any) -> None:
    """Data parallel: more processes than visible GPUs is bad input; refuse it before a run exists."""
    if (cfg.pytorch.num_processes or 1) > 1:
        from llem_mlflow.distributed import check_devices

        check_devices(cfg)


def _resolve_registered_model(model: str) -> tuple[str | None, tuple[str, str] | None]:
    """For `models:/...`: the local copy to load and the (name, version) to tag with the results."""
    if not model.startswith("models:/"):
        return None, None
    from llem_mlflow.tracking.registry import resolve_registered_model

    local_dir, name, version = resolve_registered_model(model)
    return str(local_dir), (name, str(version))


def _tag_registered_version(logger: Any, version: tuple[str, str]) -> None:
    """Runs in the reporter's worker process."""
    from llem_mlflow.tracking.registry import tag_version_with_results

    tag_version_with_results(logger.client, version[0], version[1], logger.run_id)
    print(f"tagged: {version[0]} version {version[1]} with this run's results", flush=True)


def _register(logger: Any, registry: Any) -> None:
    """Runs in the reporter's worker process."""
    from llem_mlflow.tracking.registry import register_run

    version = register_run(logger.client, logger.run_id, registry.model_name, registry.alias, registry.tags)
    print(f"registered: {registry.model_name} version {version.version}", flush=True)


def _headline(metrics: dict[str, float], tags: dict[str, str]) -> str:
    """The summary line, the energy figure saying what it rests on, then every validity warning."""
    from llem_mlflow.metrics_registry import HEADLINE, describe

    parts = [describe(k, metrics[k], tags) for k in HEADLINE if k in metrics]
    lines = ["done: " + (", ".join(parts) if parts else "no headline metric measured")]
    prefix = "llem.warning."
    lines += [f"warning: {key[len(prefix):]}: {text}" for key, text in sorted(tags.items()) if key.startswith(prefix)]
    return "\n".join(lines)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted()


def _say(text: str, quiet: bool, err: bool = False) -> None:
    if not quiet:
        try:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)
        except OSError:  # the reader is gone (a parent that died): the run's status says it all
            pass
