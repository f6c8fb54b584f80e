"""MLflow plugin: every new run where llem-mlflow is installed gets hardware tags.

Registered as the `mlflow.run_context_provider` entry point `llem`. MLflow
calls `tags()` at each run start, so the facts are computed once per process
(cached) and nothing here may raise: MLflow would only print a warning.
It follows mlflow's RunContextProvider protocol (in_context, tags) without
subclassing it: importing mlflow here would be circular, because mlflow
imports this module while it initialises.

Importing it has side effects on MLflow's own output, in every MLflow process where llem-mlflow
is installed (for `mlflow run` the only hook we have into its process), so that no secret is
printed there either:
- when MLFLOW_TRACKING_URI holds credentials (`http://user:password@host`), MLflow's
  "View run ... at <url>" lines, which would print them, are switched off
  (MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT, unless the user set it);
- MLflow's log lines (e.g. `mlflow run`'s "=== Running command '...' ===") pass through
  redact_text: URI credentials and `secret_key=value` assignments become <redacted>.
"""

from __future__ import annotations

import logging
import os

TAG_PREFIX = "llem.host."
# The loggers of `mlflow run` that print the entry point's command line and parameters.
PROJECT_LOGGERS = ("mlflow.projects", "mlflow.projects.backend.local", "mlflow.projects.utils", "mlflow.projects.submitted_run")


class RedactingFilter(logging.Filter):
    """Rewrites a log record whose text holds credentials or a secret assignment."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            from llem_mlflow.redact import redact_text

            text = record.getMessage()
            clean = redact_text(text)
            if clean != text:
                record.msg, record.args = clean, ()
        except Exception:  # never lose a log line over redaction
            pass
        return True


def _protect_mlflow_output() -> None:
    try:
        from llem_mlflow.redact import redact_uri
        from llem_mlflow.tracking.store import SUPPRESS_URL_PRINTING

        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if redact_uri(uri) != uri:
            os.environ.setdefault(SUPPRESS_URL_PRINTING, "true")
        # On the loggers that print commands and parameters (a logger's own filter holds whenever MLflow
        # sets its handlers up), and on MLflow's handler when it is there already (covers the rest).
        targets = [logging.getLogger(name) for name in PROJECT_LOGGERS] + logging.getLogger("mlflow").handlers
        for target in targets:
            if not any(isinstance(f, RedactingFilter) for f in target.filters):
                target.addFilter(RedactingFilter())
    except Exception:  # never break an MLflow process over its output
        pass


_protect_mlflow_output()


class HardwareContextProvider:
    def in_context(self) -> bool:
        return True

    def tags(self) -> dict[str, str]:
        try:
            from llem_mlflow.tracking.hardware import cpu_model, gpu_facts

            facts = {"cpu": cpu_model(), **gpu_facts()}
            return {TAG_PREFIX + key: value for key, value in facts.items()}
        except Exception:
            return {}
