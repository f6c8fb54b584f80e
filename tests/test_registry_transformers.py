"""A random:tiny model logged with the transformers flavor, resolved from models:/ to a from_pretrained directory."""

from __future__ import annotations

import pytest

from llem_mlflow.errors import ModelLoadError
from llem_mlflow.tracking.registry import resolve_registered_model


@pytest.fixture(scope="module")
def tiny_model():
    """bench's random:tiny preset (a real Llama, random weights, trained tokenizer), built offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llem_mlflow.bench.random_models import random_model_dir

    directory, _ = random_model_dir("random:tiny", seed=7)
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


def log_transformers_model(tiny_model, name: str, alias: str | None = None) -> str:
    """Log with the transformers flavor and register it; returns the version."""
    import mlflow

    model, tokenizer = tiny_model
    with mlflow.start_run():
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer},
            name="model",
            task="text-generation",
            pip_requirements=[],  # skip dependency inference: slow, and not what is tested
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def assert_loads_same_model(directory, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny_model
    loaded = AutoModelForCausalLM.from_pretrained(directory)
    loaded_tokenizer = AutoTokenizer.from_pretrained(directory)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    for (key, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(expected, actual), key
    text = "The energy cost of inference"
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]


@pytest.mark.slow
def test_resolve_version_and_alias_to_a_from_pretrained_dir(mlflow_store, tiny_model, tmp_path):
    import mlflow

    mlflow.set_experiment("transformers")
    version = log_transformers_model(tiny_model, "tiny-hf", alias="champion")

    directory, name, resolved_version = resolve_registered_model("models:/tiny-hf@champion", dst_dir=tmp_path / "dl")
    assert (name, resolved_version) == ("tiny-hf", version)
    assert directory.is_relative_to(tmp_path / "dl")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in directory.iterdir()}
    assert_loads_same_model(directory, tiny_model)

    directory, _, resolved_version = resolve_registered_model(f"models:/tiny-hf/{version}")
    assert resolved_version == version
    assert_loads_same_model(directory, tiny_model)

    with pytest.raises(ModelLoadError, match="not found"):
        resolve_registered_model(f"models:/tiny-hf/{int(version) + 1}")


@pytest.mark.slow
def test_a_non_transformers_version_is_refused(mlflow_store, tmp_path):
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    mlflow.set_experiment("pyfunc")  # the fluent API remembers the last test's experiment otherwise
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="echo", python_model=Echo(), pip_requirements=[], registered_model_name="echo")
    with pytest.raises(ModelLoadError, match="not a transformers-flavor model.*python_function"):
        resolve_registered_model("models:/echo/1", dst_dir=tmp_path / "dl")
