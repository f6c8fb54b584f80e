"""The prompt set as an MLflow dataset input, and the request table as an MLflow table (real sqlite store)."""

from __future__ import annotations

import json

from helpers import artifact_json

from llem_mlflow.bench.generation import RequestRecord
from llem_mlflow.bench.prompts import Prompt
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.tracking.datasets import log_prompt_dataset, prompt_dataset, run_dataset
from llem_mlflow.tracking.reporter import REQUEST_COLUMNS, log_request_table
from llem_mlflow.tracking.run import RunLogger

PROMPTS = [Prompt(3, "Why is the sky blue?"), Prompt(0, "Define entropy."), Prompt(3, "Why is the sky blue?")]


def test_each_source_names_its_dataset_and_the_digest_follows_the_prompts(tmp_path):
    builtin = prompt_dataset(ExperimentConfig(model="m"), PROMPTS)
    assert builtin.name == "builtin-prompts"
    assert json.loads(builtin.source.to_json()) == {"uri": "llem_mlflow/bench/data/prompts.jsonl"}
    assert builtin.df.to_dict("list") == {"prompt_index": [3, 0, 3], "prompt": [p.text for p in PROMPTS]}

    path = tmp_path / "my prompts.jsonl"
    from_file = prompt_dataset(ExperimentConfig(model="m", dataset={"source": str(path)}), PROMPTS)
    assert from_file.name == "my prompts.jsonl" and json.loads(from_file.source.to_json()) == {"uri": str(path.resolve())}
    assert from_file.digest == builtin.digest  # same prompts, same digest: it describes the content

    synthetic_cfg = ExperimentConfig(model="m", dataset={"source": "synthetic", "synthetic_input_tokens": 8}, random_seed=7)
    synthetic = prompt_dataset(synthetic_cfg, PROMPTS)
    assert synthetic.name == "synthetic-8-tokens" and synthetic.source._get_source_type() == "code"
    assert json.loads(synthetic.source.to_json())["tags"]["seed"] == "7"

    reordered = prompt_dataset(ExperimentConfig(model="m"), list(reversed(PROMPTS[:2])))
    assert reordered.digest != prompt_dataset(ExperimentConfig(model="m"), PROMPTS[:2]).digest


def test_the_prompt_set_is_the_runs_dataset_input(mlflow_store):
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    log_prompt_dataset(RunLogger(client, run_id), ExperimentConfig(model="m"), PROMPTS)
    log_prompt_dataset(RunLogger(client, run_id), ExperimentConfig(model="m"), [])  # nothing measured: nothing logged
    run = client.get_run(run_id)
    (item,) = run.inputs.dataset_inputs
    assert item.dataset.name == "builtin-prompts" and item.dataset.source_type == "local"
    assert {t.key: t.value for t in item.tags} == {"mlflow.data.context": "benchmark"}
    assert json.loads(item.dataset.profile)["num_rows"] == 3
    assert "Why is the sky" not in json.dumps(item.dataset.to_dictionary())  # a description only, never the texts
    assert run_dataset(run) == (item.dataset.name, item.dataset.digest)


def test_request_table_is_an_mlflow_table_logged_once(mlflow_store):
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    records = [
        RequestRecord(request_index=i, batch_index=i // 2, prompt_index=i, input_tokens=5, output_tokens=4,
                      ttft_ms=10.0 + i, itl_ms=[2.0, 4.0], e2e_ms=20.0 + i, text=None)
        for i in range(3)
    ]  # fmt: skip
    logger = RunLogger(client, run_id)
    log_request_table(logger, records)
    log_request_table(logger, records)  # a failure after the end logs the artifacts again: no doubled rows
    # (mlflow.load_table reads it back too, within the active experiment: helpers read the file itself)
    table = artifact_json(run_id, "requests.json")
    assert table["columns"] == REQUEST_COLUMNS
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [r["request_index"] for r in rows] == [0, 1, 2] and [r["itl_ms_mean"] for r in rows] == [3.0, 3.0, 3.0]
    assert json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"]) == [{"path": "requests.json", "type": "table"}]
