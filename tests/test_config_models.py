"""The config schema: fields, defaults, validators, presets, cross-section rules.

Includes every check of the original PyTorch parameter audit plan
(shared/reference/original-plan-pytorch-parameter-audit.txt).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llem_mlflow.config import DecoderConfig, ExperimentConfig, PyTorchConfig, models
from llem_mlflow.config.models import (
    SAMPLING_PRESETS,
    BaselineConfig,
    CooldownConfig,
    DatasetConfig,
    EnergyConfig,
    RegistryConfig,
    WarmupConfig,
)

# The fields the original plan added to PyTorchConfig, plus the M1 ones; all None by default.
PLAN_PYTORCH_FIELDS = [
    "batch_size", "num_processes", "attn_implementation", "torch_compile", "torch_compile_mode",
    "torch_compile_backend", "load_in_4bit", "load_in_8bit", "bnb_4bit_compute_dtype", "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant", "use_cache", "cache_implementation", "num_beams", "early_stopping",
    "length_penalty", "no_repeat_ngram_size", "prompt_lookup_num_tokens", "device_map", "max_memory",
    "revision", "trust_remote_code",
]  # fmt: skip


def refused(cls, **kwargs) -> str:
    """Build cls(**kwargs), expect a ValidationError, return its text."""
    with pytest.raises(ValidationError) as info:
        cls(**kwargs)
    return str(info.value)


# --- PyTorchConfig: the original plan's checks -------------------------------------------


def test_every_pytorch_field_defaults_to_none():
    cfg = PyTorchConfig()
    assert set(PLAN_PYTORCH_FIELDS) == set(PyTorchConfig.model_fields)
    for name in PLAN_PYTORCH_FIELDS:
        assert getattr(cfg, name) is None, name


def test_trust_remote_code_is_not_on_by_default():
    # None means transformers' default, False: remote code runs only when the user writes true.
    assert PyTorchConfig().trust_remote_code is None
    assert PyTorchConfig.model_fields["trust_remote_code"].default is None
    assert "False" in PyTorchConfig.model_fields["trust_remote_code"].description


@pytest.mark.parametrize("kernel", ["sdpa", "flash_attention_2", "flash_attention_3", "eager"])
def test_attention_kernels_accepted(kernel):
    assert PyTorchConfig(attn_implementation=kernel).attn_implementation == kernel


def test_unknown_attention_kernel_refused():
    assert "attn_implementation" in refused(PyTorchConfig, attn_implementation="flash_attention_9")


def test_4bit_with_compute_dtype_is_valid():
    cfg = PyTorchConfig(load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16", bnb_4bit_quant_type="nf4",
                        bnb_4bit_use_double_quant=True)  # fmt: skip
    assert cfg.bnb_4bit_compute_dtype == "bfloat16"


def test_compile_with_max_autotune_is_valid():
    cfg = PyTorchConfig(torch_compile=True, torch_compile_mode="max-autotune", torch_compile_backend="inductor")
    assert cfg.torch_compile_mode == "max-autotune"


def test_compile_mode_is_a_free_string():
    # Not a Literal: torch adds modes.
    assert PyTorchConfig(torch_compile=True, torch_compile_mode="some-future-mode").torch_compile_mode


def test_experiment_with_revision_is_valid():
    cfg = ExperimentConfig(model="gpt2", pytorch=PyTorchConfig(revision="abc123"))
    assert cfg.pytorch.revision == "abc123"


def test_decoder_min_p_and_min_new_tokens():
    cfg = DecoderConfig(min_p=0.1, min_new_tokens=10)
    assert (cfg.min_p, cfg.min_new_tokens) == (0.1, 10)
    assert DecoderConfig().min_p is None and DecoderConfig().min_new_tokens is None
    assert "min_p" in refused(DecoderConfig, min_p=-0.1)
    assert "min_p" in refused(DecoderConfig, min_p=1.1)
    assert "min_new_tokens" in refused(DecoderConfig, min_new_tokens=0)


# --- PyTorchConfig validators: each raises and names its fields ---------------------------


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"load_in_4bit": True, "load_in_8bit": True}, ["load_in_4bit", "load_in_8bit"]),
        ({"torch_compile_mode": "reduce-overhead"}, ["torch_compile_mode", "torch_compile"]),
        ({"torch_compile_backend": "eager"}, ["torch_compile_backend", "torch_compile"]),
        ({"torch_compile": False, "torch_compile_mode": "default"}, ["torch_compile_mode", "torch_compile"]),
        ({"bnb_4bit_compute_dtype": "bfloat16"}, ["bnb_4bit_compute_dtype", "load_in_4bit"]),
        ({"bnb_4bit_quant_type": "nf4", "load_in_4bit": False}, ["bnb_4bit_quant_type", "load_in_4bit"]),
        ({"bnb_4bit_use_double_quant": True, "load_in_8bit": True}, ["bnb_4bit_use_double_quant", "load_in_4bit"]),
        ({"use_cache": False, "cache_implementation": "static"}, ["cache_implementation", "use_cache"]),
        ({"prompt_lookup_num_tokens": 3, "num_beams": 2}, ["prompt_lookup_num_tokens", "num_beams"]),
        ({"prompt_lookup_num_tokens": 3, "batch_size": 2}, ["prompt_lookup_num_tokens", "batch_size"]),
        ({"early_stopping": True}, ["early_stopping", "num_beams"]),
        ({"length_penalty": 0.5, "num_beams": 1}, ["length_penalty", "num_beams"]),
        ({"num_processes": 2, "device_map": "auto"}, ["num_processes", "device_map", "'auto'", "num_processes: 1"]),
        ({"num_processes": 2, "device_map": "cuda:1"}, ["num_processes", "device_map", "'cuda:1'"]),
        ({"max_memory": {0: "10GiB"}}, ["max_memory", "device_map"]),
        ({"max_memory": {0: "10GiB"}, "device_map": "cuda:0"}, ["max_memory", "device_map", "'cuda:0'"]),
    ],
)
def test_pytorch_validator_names_its_fields(kwargs, names):
    message = refused(PyTorchConfig, **kwargs)
    for name in names:
        assert name in message, (name, message)


def test_cache_implementation_allowed_with_cache_on_or_unset():
    assert PyTorchConfig(cache_implementation="static").use_cache is None
    assert PyTorchConfig(use_cache=True, cache_implementation="offloaded_static").cache_implementation
    assert PyTorchConfig(use_cache=True, cache_implementation="sliding_window").cache_implementation


def test_cache_implementation_values_exist_in_transformers():
    pytest.importorskip("transformers")
    from typing import get_args

    from transformers.generation.configuration_utils import ALL_CACHE_IMPLEMENTATIONS

    from llem_mlflow.config.backend_configs import CacheImplementation

    assert {"static", "offloaded_static", "sliding_window"} <= set(get_args(CacheImplementation))
    assert set(get_args(CacheImplementation)) <= set(ALL_CACHE_IMPLEMENTATIONS)


def test_beam_options_valid_with_beams_and_prompt_lookup_valid_alone():
    assert PyTorchConfig(num_beams=4, early_stopping=True, length_penalty=0.8).num_beams == 4
    assert PyTorchConfig(prompt_lookup_num_tokens=10, batch_size=1, num_beams=1).prompt_lookup_num_tokens == 10


@pytest.mark.parametrize(
    ("field", "value"),
    [("batch_size", 0), ("num_processes", 0), ("num_beams", 0), ("no_repeat_ngram_size", -1),
     ("prompt_lookup_num_tokens", 0), ("bnb_4bit_quant_type", "int3"), ("cache_implementation", "paged")],
)  # fmt: skip
def test_pytorch_ranges(field, value):
    message = refused(PyTorchConfig, **{field: value})
    assert field in message and (repr(value) in message or str(value) in message)


# --- max_memory ----------------------------------------------------------------------


def test_max_memory_valid_and_gpu_keys_from_text_become_ints():
    cfg = PyTorchConfig(device_map="auto", max_memory={"0": "10GiB", 1: "500MB", "cpu": "30GiB", "disk": "1.5GB"})
    assert cfg.max_memory == {0: "10GiB", 1: "500MB", "cpu": "30GiB", "disk": "1.5GB"}


@pytest.mark.parametrize("device_map", ["auto", "balanced", "balanced_low_0", "sequential"])
def test_max_memory_with_each_device_map_that_reads_it(device_map):
    assert PyTorchConfig(device_map=device_map, max_memory={0: "1GiB"}).max_memory == {0: "1GiB"}


@pytest.mark.parametrize("key", ["gpu0", -1, "cuda:0", True, 1.5])
def test_max_memory_bad_key(key):
    message = refused(PyTorchConfig, device_map="auto", max_memory={key: "1GiB"})
    assert f"max_memory key {key!r} is not a GPU index" in message


@pytest.mark.parametrize("size", ["lots", "10", "1TB", "10 GiB ", "10gb", "500B", "-1GiB"])
def test_max_memory_bad_size(size):
    message = refused(PyTorchConfig, device_map="auto", max_memory={0: size})
    assert f"max_memory[0] = {size!r} is not a size" in message and "GiB" in message


# --- DecoderConfig -----------------------------------------------------------------------


def test_decoder_defaults():
    cfg = DecoderConfig()
    assert (cfg.temperature, cfg.do_sample, cfg.top_k, cfg.top_p, cfg.repetition_penalty) == (1.0, True, 50, 1.0, 1.0)
    assert cfg.preset is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("temperature", 2.1), ("top_k", -1), ("top_p", 1.01), ("top_p", -0.5),
     ("repetition_penalty", 0.05), ("repetition_penalty", 10.5), ("preset", "wild")],
)  # fmt: skip
def test_decoder_ranges(field, value):
    assert field in refused(DecoderConfig, **{field: value})


@pytest.mark.parametrize("name", sorted(SAMPLING_PRESETS))
def test_each_preset_expands(name):
    cfg = DecoderConfig(preset=name)
    assert cfg.preset == name
    for field, value in SAMPLING_PRESETS[name].items():
        assert getattr(cfg, field) == value, (name, field)


def test_preset_values_are_the_documented_ones():
    assert SAMPLING_PRESETS == {
        "deterministic": {"temperature": 0.0, "do_sample": False},
        "standard": {"temperature": 1.0, "do_sample": True, "top_p": 0.95},
        "creative": {"temperature": 0.8, "do_sample": True, "top_p": 0.9, "repetition_penalty": 1.1},
        "factual": {"temperature": 0.3, "do_sample": True},
    }


def test_explicit_fields_beat_the_preset():
    cfg = DecoderConfig(preset="creative", top_p=0.5, repetition_penalty=1.3)
    assert (cfg.top_p, cfg.repetition_penalty, cfg.temperature) == (0.5, 1.3, 0.8)
    cfg = DecoderConfig(preset="deterministic", do_sample=True, temperature=0.7)
    assert (cfg.do_sample, cfg.temperature) == (True, 0.7)


def test_preset_check_at_import_names_unknown_fields(monkeypatch):
    monkeypatch.setitem(SAMPLING_PRESETS, "broken", {"temprature": 0.5})
    with pytest.raises(RuntimeError, match=r"'broken'.*temprature"):
        models._check_presets_name_fields()


def test_temperature_zero_alone_means_greedy():
    cfg = DecoderConfig(temperature=0)
    assert (cfg.temperature, cfg.do_sample) == (0.0, False)


def test_temperature_zero_with_explicit_sampling_is_refused():
    message = refused(DecoderConfig, temperature=0.0, do_sample=True)
    assert "temperature 0" in message and "do_sample" in message
    assert "do_sample" in refused(DecoderConfig, preset="deterministic", do_sample=True)


def test_numbers_do_not_take_bools_and_text_none_is_refused():
    assert "expected a number, got true" in refused(PyTorchConfig, batch_size=True)
    assert "expected a number, got false" in refused(DecoderConfig, temperature=False)
    assert "write null" in refused(PyTorchConfig, device_map="None")
    assert "finite" in refused(PyTorchConfig, num_beams=2, length_penalty=float("inf"))
    assert "finite" in refused(CooldownConfig, tolerance_c=float("nan"))


# --- unknown fields refused at every level ------------------------------------------------


@pytest.mark.parametrize(
    "cls", [PyTorchConfig, DecoderConfig, DatasetConfig, WarmupConfig, BaselineConfig, EnergyConfig, CooldownConfig]
)
def test_unknown_field_refused_in_each_section(cls):
    assert "nonexistent" in refused(cls, nonexistent=True)
    assert "nonexistent" in refused(RegistryConfig, model_name="m", nonexistent=1)


@pytest.mark.parametrize(
    "section", ["pytorch", "decoder", "dataset", "warmup", "baseline", "energy", "cooldown", "registry"]
)
def test_unknown_field_refused_when_nested(section):
    data = {"model": "gpt2", section: {"nonexistent": True}}
    if section == "registry":
        data[section]["model_name"] = "m"
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate(data)
    errors = info.value.errors()
    assert any(e["type"] == "extra_forbidden" and e["loc"] == (section, "nonexistent") for e in errors)


def test_unknown_top_level_field_refused():
    assert "nonexistent" in refused(ExperimentConfig, model="gpt2", nonexistent=1)
    assert "nonexistent" in refused(ExperimentConfig, model="gpt2", pytorch=PyTorchConfig(), nonexistent=1)


# --- ExperimentConfig and cross-section rules ----------------------------------------------


def test_experiment_defaults():
    cfg = ExperimentConfig(model="random:tiny")
    assert (cfg.backend, cfg.precision, cfg.max_input_tokens, cfg.max_output_tokens, cfg.random_seed) == (
        "pytorch", None, 512, 128, 42)  # fmt: skip
    assert cfg.registry is None and cfg.tags == {} and cfg.passthrough_kwargs == {}
    assert cfg.dataset.source == "builtin" and cfg.warmup.enabled and cfg.baseline.enabled
    assert (cfg.energy.gpu, cfg.energy.codecarbon) == ("auto", True)


def test_model_is_required():
    assert "model" in refused(ExperimentConfig)


def test_min_new_tokens_must_fit_max_output_tokens():
    ExperimentConfig(model="m", max_output_tokens=8, decoder=DecoderConfig(min_new_tokens=8))
    message = refused(ExperimentConfig, model="m", max_output_tokens=8, decoder=DecoderConfig(min_new_tokens=9))
    assert "decoder.min_new_tokens (9) exceeds max_output_tokens (8)" in message


def test_synthetic_prompt_must_fit_max_input_tokens():
    dataset = DatasetConfig(source="synthetic", synthetic_input_tokens=64)
    assert ExperimentConfig(model="m", max_input_tokens=64, dataset=dataset).dataset.synthetic_input_tokens == 64
    message = refused(ExperimentConfig, model="m", max_input_tokens=63, dataset=dataset)
    assert "dataset.synthetic_input_tokens (64) exceeds max_input_tokens (63)" in message


def test_dataset_rules():
    assert "synthetic_input_tokens" in refused(DatasetConfig, source="synthetic")
    assert "synthetic_input_tokens" in refused(DatasetConfig, source="prompts.jsonl", synthetic_input_tokens=5)
    assert "column" in refused(DatasetConfig, source="builtin", column="text")
    assert DatasetConfig(source="prompts.jsonl", column="text").column == "text"


def test_random_seed_range():
    assert ExperimentConfig(model="m", random_seed=2**32 - 1).random_seed == 2**32 - 1
    assert "random_seed" in refused(ExperimentConfig, model="m", random_seed=2**32)


@pytest.mark.parametrize(
    ("key", "field"),
    [("device_map", "pytorch.device_map"), ("torch_dtype", "precision"), ("dtype", "precision"),
     ("quantization_config", "pytorch.load_in_4bit"), ("use_cache", "pytorch.use_cache"),
     ("trust_remote_code", "pytorch.trust_remote_code"), ("max_memory", "pytorch.max_memory"),
     ("temperature", "decoder.temperature"), ("max_new_tokens", "max_output_tokens")],
)  # fmt: skip
def test_passthrough_refuses_covered_keys(key, field):
    message = refused(ExperimentConfig, model="m", passthrough_kwargs={key: "x", "low_cpu_mem_usage": True})
    assert f"passthrough_kwargs sets {key}" in message and f"{key} -> {field}" in message


def test_passthrough_accepts_uncovered_json_values():
    kwargs = {"low_cpu_mem_usage": True, "subfolder": "v2", "rope_scaling": {"type": "linear", "factor": 2.0},
              "ids": [1, None, "x"]}  # fmt: skip
    assert ExperimentConfig(model="m", passthrough_kwargs=kwargs).passthrough_kwargs == kwargs


@pytest.mark.parametrize(
    ("value", "problem"),
    [(float("nan"), "holds nan"), ([float("inf")], "holds inf"), ({1: "a"}, "has a mapping key that is not text"),
     (b"raw", "holds a bytes"), ((1, 2), "holds a tuple")],
)  # fmt: skip
def test_passthrough_refuses_values_params_cannot_hold(value, problem):
    message = refused(ExperimentConfig, model="m", passthrough_kwargs={"k": value})
    assert f"passthrough_kwargs.k {problem}" in message


def test_registry_needs_a_model_name():
    assert "model_name" in refused(RegistryConfig)
    assert ExperimentConfig(model="m", registry={"model_name": "bench"}).registry.model_name == "bench"
