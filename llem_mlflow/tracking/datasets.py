"""The prompt set as an MLflow dataset: the run's input, and what its figures were measured on.

`log_prompt_dataset` (a reporter job) logs it with `log_inputs`, so the runs table's Datasets
column shows `name (digest)`; the registry links a version's metrics to the same dataset.
Only the dataset's description travels (name, digest, source, schema, row count), never the
prompt texts. No torch; mlflow and pandas are imported inside the functions (worker process).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

# The package file the built-in prompts come from (a stable name on every machine).
BUILTIN_SOURCE = "llem_mlflow/bench/data/prompts.jsonl"
# MLflow's input tag for what a dataset was used for (training, eval, ...): ours measured a model.
CONTEXT = "benchmark"


def dataset_name(dataset_cfg: Any) -> str:
    """`builtin-prompts`, `synthetic-512-tokens`, or the prompt file's name."""
    if dataset_cfg.source == "builtin":
        return "builtin-prompts"
    if dataset_cfg.source == "synthetic":
        return f"synthetic-{dataset_cfg.synthetic_input_tokens}-tokens"
    return Path(dataset_cfg.source).name


def prompt_dataset(cfg: Any, prompts: list[Any]) -> Any:
    """The measured prompts (in measured order, with their row in the source) as a PandasDataset.

    Its digest is MLflow's hash of that table: the same prompts in the same order give the same digest.
    """
    import mlflow.data
    import pandas as pd
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    ds = cfg.dataset
    if ds.source == "synthetic":
        tags = {"generator": "llem_mlflow.bench.prompts.synthetic_prompts", "tokens": ds.synthetic_input_tokens, "seed": cfg.random_seed}
        source = CodeDatasetSource({k: str(v) for k, v in tags.items()})
    else:
        uri = BUILTIN_SOURCE if ds.source == "builtin" else str(Path(ds.source).resolve())
        source = get_dataset_source_from_json(json.dumps({"uri": uri}), source_type="local")
    frame = pd.DataFrame({"prompt_index": [p.index for p in prompts], "prompt": [p.text for p in prompts]})
    return mlflow.data.from_pandas(frame, source=source, name=dataset_name(ds))


def log_prompt_dataset(logger: Any, cfg: Any, prompts: list[Any]) -> None:
    """Runs in the reporter's worker: the prompt set becomes the run's dataset input."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if not prompts:
        return
    with warnings.catch_warnings():  # MLflow's hint about integer columns in model schemas: not for us
        warnings.simplefilter("ignore")
        dataset = prompt_dataset(cfg, prompts)._to_mlflow_entity()
    logger.client.log_inputs(logger.run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXT)])])


def run_dataset(run: Any) -> tuple[str, str] | None:
    """(name, digest) of the prompt set a run logged, or None (a run made before datasets were logged)."""
    for item in getattr(run.inputs, "dataset_inputs", None) or []:
        if any(t.key == "mlflow.data.context" and t.value == CONTEXT for t in item.tags):
            return item.dataset.name, item.dataset.digest
    return None

