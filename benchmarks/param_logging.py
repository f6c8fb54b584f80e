"""How long logging 200 params takes through RunLogger (batched) vs one call per param.

Target (issue 3): 200 params well under a second on a local sqlite store.
Prints both times and the ratio batched/one-by-one.

    python benchmarks/param_logging.py
"""

from __future__ import annotations

import os
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from mlflow import MlflowClient

        from llem_mlflow.tracking.run import RunLogger

        params = {f"section{i // 20}.field_{i}": str(i * 0.5) for i in range(200)}
        client = MlflowClient()
        experiment_id = client.create_experiment("bench")

        logger = RunLogger(client, client.create_run(experiment_id).info.run_id)
        start = time.perf_counter()
        logger.log_params(params)
        batched = time.perf_counter() - start

        run_id = client.create_run(experiment_id).info.run_id
        start = time.perf_counter()
        for key, value in params.items():
            client.log_param(run_id, key, value)
        one_by_one = time.perf_counter() - start

    print(f"200 params batched: {batched * 1000:.0f} ms; one call each: {one_by_one * 1000:.0f} ms")
    print(f"ratio batched/one-by-one: {batched / one_by_one:.3f} (target: batched < 1 s)")


if __name__ == "__main__":
    main()
