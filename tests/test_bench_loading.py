"""Every PyTorchConfig loading field reaches from_pretrained (seen in `resolved` and on the model)."""

from __future__ import annotations

import json

import pytest
import torch

from llem_mlflow.bench.loading import load_model
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.errors import ModelLoadError


def config(**fields) -> ExperimentConfig:
    return ExperimentConfig(model=fields.pop("model", "random:tiny"), **fields)


def kwargs_of(loaded) -> dict:
    json.dumps(loaded.resolved)  # resolved must be JSON-safe
    return loaded.resolved["from_pretrained_kwargs"]


def test_defaults_pass_only_the_dtype_and_load_on_cpu():
    loaded = load_model(config())
    assert kwargs_of(loaded) == {"dtype": "float32"}  # None fields: nothing passed
    assert loaded.device == "cpu" and loaded.gpu_indices == []
    assert loaded.resolved["model_class"] == "LlamaForCausalLM"
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    assert 0 < loaded.n_non_embedding_params < loaded.n_params == loaded.model.num_parameters()
    assert loaded.resolved["torch_compile"] is None


def test_random_model_reports_cache_use():
    load_model(config(random_seed=5))
    second = load_model(config(random_seed=5))
    assert second.resolved["random_model"]["built_now"] is False
    assert second.resolved["origin"] == "random"


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_precision_sets_dtype(precision, dtype):
    loaded = load_model(config(precision=precision))
    assert kwargs_of(loaded)["dtype"] == str(dtype).removeprefix("torch.")
    assert loaded.model.dtype == dtype and loaded.resolved["dtype"] == str(dtype).removeprefix("torch.")


def test_attn_implementation_reaches_the_model():
    loaded = load_model(config(pytorch={"attn_implementation": "eager"}))
    assert kwargs_of(loaded)["attn_implementation"] == "eager"
    assert loaded.model.config._attn_implementation == "eager"


def _generates(loaded) -> None:
    inputs = loaded.tokenizer(["a short prompt"], return_tensors="pt")
    out = loaded.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_load_in_4bit_with_every_bnb_option_on_cpu():
    import bitsandbytes as bnb

    loaded = load_model(
        config(
            pytorch={
                "load_in_4bit": True,
                "bnb_4bit_compute_dtype": "bfloat16",
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": True,
            }
        )
    )
    quant = kwargs_of(loaded)["quantization_config"]
    assert quant["load_in_4bit"] is True and quant["load_in_8bit"] is False
    assert quant["bnb_4bit_compute_dtype"] == "bfloat16"
    assert quant["bnb_4bit_quant_type"] == "nf4"
    assert quant["bnb_4bit_use_double_quant"] is True
    layer = loaded.model.model.layers[0].mlp.up_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_type == "nf4"
    # num_parameters() undoes the 4-bit packing: same count as the unquantized model
    assert loaded.n_params == load_model(config()).n_params
    _generates(loaded)


def test_load_in_8bit_on_cpu():
    import bitsandbytes as bnb

    loaded = load_model(config(pytorch={"load_in_8bit": True}))
    quant = kwargs_of(loaded)["quantization_config"]
    assert quant["load_in_8bit"] is True and quant["load_in_4bit"] is False
    assert isinstance(loaded.model.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    _generates(loaded)


def test_device_map_reaches_from_pretrained():
    loaded = load_model(config(pytorch={"device_map": "cpu"}))
    assert kwargs_of(loaded)["device_map"] == "cpu"
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
    assert loaded.device == "cpu" and loaded.gpu_indices == []


def test_max_memory_reaches_from_pretrained():
    loaded = load_model(config(pytorch={"device_map": "auto", "max_memory": {"cpu": "2GiB"}}))
    assert kwargs_of(loaded)["max_memory"] == {"cpu": "2GiB"}
    assert kwargs_of(loaded)["device_map"] == "auto"
    assert set(getattr(loaded.model, "hf_device_map", {"": "cpu"}).values()) == {"cpu"}


def test_revision_and_trust_remote_code_are_passed_when_set():
    loaded = load_model(config(pytorch={"revision": "main", "trust_remote_code": False}))
    assert kwargs_of(loaded)["revision"] == "main"
    assert kwargs_of(loaded)["trust_remote_code"] is False
    unset = kwargs_of(load_model(config()))
    assert "revision" not in unset and "trust_remote_code" not in unset


def test_passthrough_kwargs_come_last():
    loaded = load_model(config(passthrough_kwargs={"use_safetensors": True}))
    assert list(kwargs_of(loaded))[-1] == "use_safetensors"


def test_torch_compile_with_mode_and_backend_on_cpu():
    # 'eager' backend: dynamo traces forward without inductor's C++ build (minutes on 2 cores).
    loaded = load_model(
        config(pytorch={"torch_compile": True, "torch_compile_mode": "default", "torch_compile_backend": "eager"})
    )
    assert loaded.resolved["torch_compile"] == {"mode": "default", "backend": "eager"}
    assert hasattr(loaded.model.forward, "_torchdynamo_orig_callable")  # generate() calls the compiled forward
    _generates(loaded)


@pytest.mark.slow
def test_torch_compile_inductor_on_cpu():
    loaded = load_model(config(pytorch={"torch_compile": True}))
    assert loaded.resolved["torch_compile"] == {"mode": None, "backend": "inductor"}
    _generates(loaded)


def test_local_directory_loads_like_random(tmp_path):
    from llem_mlflow.bench.random_models import random_model_dir

    directory, _ = random_model_dir("random:tiny", 42)
    loaded = load_model(config(model=str(directory)))
    assert loaded.resolved["origin"] == "local" and loaded.n_params == load_model(config()).n_params
    via_path = load_model(config(model="models:/tiny/1"), model_path=str(directory))
    assert via_path.resolved["origin"] == "registry"


def test_missing_local_path_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="local path not found"):
        load_model(config(model=str(tmp_path / "nope")))


@pytest.mark.parametrize("offline_env", ["1", None])
def test_uncached_hub_id_fails_fast(monkeypatch, offline_env):
    # With HF_HUB_OFFLINE unset, the hub probe (or, with internet, the hub's 404) must still answer quickly.
    import time

    if offline_env is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline_env)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_model(config(model="some-org/not-a-cached-model"))
    assert time.perf_counter() - start < 10
    assert "some-org/not-a-cached-model" in str(err.value) and "random:" in str(err.value)


def test_models_uri_without_download_is_refused():
    with pytest.raises(ModelLoadError, match="models:/"):
        load_model(config(model="models:/bench/1"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_defaults_bf16_on_cuda0_and_device_map_auto():
    loaded = load_model(config())
    assert loaded.device == "cuda:0" and loaded.gpu_indices == [0] and loaded.model.dtype == torch.bfloat16
    auto = load_model(config(pytorch={"device_map": "auto"}))
    assert auto.gpu_indices and auto.device.startswith("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_flash_attention_2():
    pytest.importorskip("flash_attn")
    loaded = load_model(config(pytorch={"attn_implementation": "flash_attention_2"}))
    assert loaded.model.config._attn_implementation == "flash_attention_2"


def test_lengths_beyond_the_context_window_are_refused_before_the_weights_load(monkeypatch):
    """A local model (here the saved random:tiny, 2048 positions): its config.json is read first, and
    prompt + output that cannot fit stop the load before any weight is read."""
    from llem_mlflow.bench import loading
    from llem_mlflow.bench.random_models import random_model_dir
    from llem_mlflow.errors import ConfigError

    directory, _ = random_model_dir("random:tiny", 42)
    monkeypatch.setattr(loading, "_load_weights", lambda *a: pytest.fail("the weights were loaded"))
    with pytest.raises(ConfigError) as error:
        load_model(config(model=str(directory), max_input_tokens=2000, max_output_tokens=100))
    assert "2100 tokens do not fit the context window" in str(error.value)
    assert "2048 tokens (max_position_embeddings in its config)" in str(error.value)
    # passthrough_kwargs reach the config as they reach from_pretrained: a longer window is honoured.
    monkeypatch.setattr(loading, "_load_weights", lambda *a: pytest.fail("fits now") )
    with pytest.raises(pytest.fail.Exception, match="fits now"):
        load_model(config(model=str(directory), max_input_tokens=2000, max_output_tokens=100,
                          passthrough_kwargs={"max_position_embeddings": 4096}))  # fmt: skip


def test_context_window_reads_every_family_and_rope_scaling():
    from llem_mlflow.bench.context import context_window

    assert context_window({"max_position_embeddings": 2048}) == (2048, "max_position_embeddings")
    assert context_window({"n_positions": 1024}) == (1024, "n_positions")  # gpt2
    assert context_window({"text_config": {"max_position_embeddings": 8192}}) == (8192, "max_position_embeddings")
    yarn = {"max_position_embeddings": 32768, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    assert context_window(yarn)[0] == 131072  # Qwen2.5 with YaRN
    llama3 = {"max_position_embeddings": 131072, "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}
    assert context_window(llama3)[0] == 131072  # already the stretched window
    assert context_window({"hidden_size": 64}) is None  # unknown: not checked
