"""`llem-mlflow run`: config -> MLflow run, with a truthful end status.

Outcomes (docs/reliability.md):
- success: run FINISHED, exit 0;
- bad input (LlemError): run FAILED (if one exists yet), error as tag + artifact, exit 2;
- a fault mid-run (e.g. CUDA out of memory): run FAILED, finished batches kept, exit 1;
- Ctrl-C / SIGTERM: run KILLED, partial data and energy so far logged, exit 130.
A run is never left RUNNING.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

from llem_mlflow.errors import LlemError

EXIT_OK, EXIT_FAULT, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_ERROR_TAG = 5000


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
) -> int:
    from llem_mlflow.config.loader import load_config
    from llem_mlflow.runner import Experiment
    from llem_mlflow.tracking.run import RunLogger

    logger: RunLogger | None = None
    experiment: Experiment | None = None
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        if os.environ.get("MLFLOW_RUN_ID"):
            # Under `mlflow run` the run exists already: resume it first so that bad input marks it FAILED.
            logger = RunLogger.start()
        cfg = load_config(config_path, overrides)
        _check_country(cfg)
        model_path, registered_version = _resolve_registered_model(cfg.model)
        if logger is None:
            logger = RunLogger.start(experiment_name, experiment_id, run_name, parent_run_id)
        _say(logger.where(), quiet=False)
        experiment = Experiment(cfg, logger, quiet=quiet, model_path=model_path)
        state = experiment.run()
        if registered_version is not None:
            _tag_registered_version(logger, registered_version)
        if cfg.registry is not None:
            _register(logger, cfg)
        logger.end("FINISHED")
        _say(_headline(state.metrics), quiet)
        return EXIT_OK
    except KeyboardInterrupt:
        _fail(logger, experiment, "KILLED", "interrupted (Ctrl-C or SIGTERM) - partial results kept")
        _say("Interrupted: the run is marked KILLED; what was measured so far is logged.", quiet=False, err=True)
        return EXIT_INTERRUPTED
    except LlemError as exc:
        message = str(exc)
        _fail(logger, experiment, "FAILED", message)
        _say(f"Error: {message}", quiet=False, err=True)
        return exc.exit_code
    except Exception as exc:  # a fault mid-run: keep what finished, say what happened
        message = fault_message(exc)
        _fail(logger, experiment, "FAILED", message, detail=traceback.format_exc())
        _say(f"Error: {message}", quiet=False, err=True)
        return EXIT_FAULT
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if experiment is not None:
            experiment.cleanup()


def fault_message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if type(exc).__name__ == "OutOfMemoryError":
        return f"out of memory during generation ({text}). Hint: lower pytorch.batch_size or max_output_tokens, or quantize (pytorch.load_in_4bit)"
    return text


def _fail(logger: Any, experiment: Any, status: str, message: str, detail: str | None = None) -> None:
    """Log what is known about the failure and end the run; never raises (the run must not stay RUNNING)."""
    if logger is None:
        return
    steps = []
    if experiment is not None:
        steps.append(lambda: experiment.log_partial(message))
    steps.append(lambda: logger.set_tags({"llem.error": message[:MAX_ERROR_TAG], "llem.status": status.lower()}))
    steps.append(lambda: logger.log_text(message + ("\n\n" + detail if detail else "") + "\n", "error.txt"))
    for step in steps:
        try:
            step()
        except Exception as exc:  # the tracking store itself may be the thing failing
            print(f"warning: could not log the failure details: {exc}", file=sys.stderr)
    try:
        logger.end(status)
    except Exception as exc:
        print(f"warning: could not mark run {logger.run_id} {status}: {exc}", file=sys.stderr)


def _check_country(cfg: Any) -> None:
    """An unknown carbon-intensity country is bad input: refuse it before a run exists."""
    if not cfg.energy.codecarbon:
        return
    from llem_mlflow.energy.codecarbon_source import country_problem
    from llem_mlflow.errors import ConfigError

    problem = country_problem(cfg.energy.country_iso_code)
    if problem:
        raise ConfigError(problem)


def _resolve_registered_model(model: str) -> tuple[str | None, tuple[str, str] | None]:
    """For `models:/...`: the local copy to load and the (name, version) to tag with the results."""
    if not model.startswith("models:/"):
        return None, None
    from llem_mlflow.tracking.registry import resolve_registered_model

    local_dir, name, version = resolve_registered_model(model)
    return str(local_dir), (name, str(version))


def _tag_registered_version(logger: Any, version: tuple[str, str]) -> None:
    from llem_mlflow.tracking.registry import tag_version_with_results

    tag_version_with_results(logger.client, version[0], version[1], logger.run_id)
    print(f"tagged: {version[0]} version {version[1]} with this run's results")


def _register(logger: Any, cfg: Any) -> None:
    from llem_mlflow.tracking.registry import register_run

    version = register_run(logger.client, logger.run_id, cfg.registry.model_name, cfg.registry.alias, cfg.registry.tags)
    print(f"registered: {cfg.registry.model_name} version {version.version}")


def _headline(metrics: dict[str, float]) -> str:
    keys = [
        ("energy/j_per_output_token", "J/token"),
        ("throughput/output_tokens_per_s", "tokens/s"),
        ("latency/ttft_ms_p50", "ms TTFT p50"),
        ("latency/e2e_ms_p50", "ms end-to-end p50"),
    ]
    parts = [f"{metrics[k]:.4g} {unit}" for k, unit in keys if k in metrics]
    return "done: " + (", ".join(parts) if parts else "no headline metric measured")


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted()


def _say(text: str, quiet: bool, err: bool = False) -> None:
    if not quiet:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
