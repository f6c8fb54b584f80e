"""MLflow plugin: every new run where llem-mlflow is installed gets hardware tags.

Registered as the `mlflow.run_context_provider` entry point `llem`. MLflow
calls `tags()` at each run start, so the facts are computed once per process
(cached) and nothing here may raise: MLflow would only print a warning.
It follows mlflow's RunContextProvider protocol (in_context, tags) without
subclassing it: importing mlflow here would be circular, because mlflow
imports this module while it initialises.
"""

from __future__ import annotations

TAG_PREFIX = "llem.host."


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
