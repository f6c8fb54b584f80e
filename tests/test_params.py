"""Config <-> MLflow params: the round trip over generated configs, the limits, the config hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llem_mlflow.aliases import alias_problem
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.config.models import COVERED_FROM_PRETRAINED_KWARGS
from llem_mlflow.config.params import (
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    UNHASHED_FIELDS,
    check_mlflow_limits,
    config_from_params,
    config_hash,
    config_to_params,
)
from llem_mlflow.energy.countries import carbon_countries
from llem_mlflow.errors import ConfigError

# --- a strategy over every field of every section, valid by construction -------------------

AWKWARD = ["", " ", "null", "~", "true", "False", "1", "0.5", "1e3", "[]", "{}", "a=b", "x.y", "'q'", '"q"',
           "tab\there", "line\nbreak", "ünïcødé", "emoji 🔋", "#comment", "- item", "none", "NULL"]  # fmt: skip


def text(min_size: int = 0) -> st.SearchStrategy[str]:
    """Any text but "None" (reserved for unset fields), mixed with strings YAML or JSON would misread."""
    awkward = [s for s in AWKWARD if len(s) >= min_size]
    return st.one_of(st.sampled_from(awkward), st.text(min_size=min_size, max_size=24)).filter(lambda s: s != "None")


def floats(lo: float | None = None, hi: float | None = None, exclude_min: bool = False) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, exclude_min=exclude_min, allow_nan=False, allow_infinity=False)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), floats(), text()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text(), inner, max_size=3)),
    max_leaves=8,
)
memory_sizes = st.builds(
    lambda n, frac, unit: f"{n}{frac}{unit}",
    st.integers(0, 4096),
    st.sampled_from(["", ".5", ".25"]),
    st.sampled_from(["KB", "MB", "GB", "KiB", "MiB", "GiB"]),
)


@st.composite
def pytorch_sections(draw) -> dict[str, Any]:
    d: dict[str, Any] = {
        "batch_size": draw(maybe(st.integers(1, 64))),
        "num_processes": draw(st.sampled_from([None, 1])),
        "attn_implementation": draw(maybe(st.sampled_from(["sdpa", "flash_attention_2", "flash_attention_3", "eager"]))),
        "torch_compile": draw(maybe(st.booleans())),
        "use_cache": draw(maybe(st.booleans())),
        "num_beams": draw(maybe(st.integers(1, 8))),
        "no_repeat_ngram_size": draw(maybe(st.integers(0, 10))),
        "device_map": draw(maybe(st.one_of(st.sampled_from(["auto", "balanced", "sequential", "cpu", "cuda:0"]), text()))),
        "revision": draw(maybe(text())),
        "trust_remote_code": draw(maybe(st.booleans())),
    }  # fmt: skip
    if d["torch_compile"]:
        d["torch_compile_mode"] = draw(maybe(text()))
        d["torch_compile_backend"] = draw(maybe(text()))
    quant = draw(st.sampled_from(["none", "4bit", "8bit", "off"]))
    if quant == "4bit":
        d["load_in_4bit"] = True
        d["bnb_4bit_compute_dtype"] = draw(maybe(st.sampled_from(["float16", "bfloat16", "float32"])))
        d["bnb_4bit_quant_type"] = draw(maybe(st.sampled_from(["nf4", "fp4"])))
        d["bnb_4bit_use_double_quant"] = draw(maybe(st.booleans()))
    elif quant == "8bit":
        d["load_in_8bit"] = True
        d["load_in_4bit"] = draw(st.sampled_from([None, False]))
    elif quant == "off":
        d["load_in_4bit"], d["load_in_8bit"] = False, False
    if d["use_cache"] is not False:
        d["cache_implementation"] = draw(
            maybe(st.sampled_from(["static", "offloaded_static", "sliding_window", "dynamic", "offloaded"]))
        )
    if (d["num_beams"] or 1) > 1:
        d["early_stopping"] = draw(maybe(st.booleans()))
        d["length_penalty"] = draw(maybe(floats(-1e6, 1e6)))
    elif (d["batch_size"] or 1) == 1:
        d["prompt_lookup_num_tokens"] = draw(maybe(st.integers(1, 20)))
    if d["device_map"] in ("auto", "balanced", "sequential"):
        keys = st.one_of(st.integers(0, 15), st.sampled_from(["cpu", "disk"]))
        d["max_memory"] = draw(maybe(st.dictionaries(keys, memory_sizes, max_size=4)))
    return d


@st.composite
def decoder_sections(draw, max_output_tokens: int) -> dict[str, Any]:
    d = {
        "temperature": draw(floats(0.0, 2.0)),
        "do_sample": draw(st.booleans()),
        "top_k": draw(st.integers(0, 10**6)),
        "top_p": draw(floats(0.0, 1.0)),
        "repetition_penalty": draw(floats(0.1, 10.0)),
        "min_p": draw(maybe(floats(0.0, 1.0))),
        "min_new_tokens": draw(maybe(st.integers(1, max_output_tokens))),
        "preset": draw(maybe(st.sampled_from(["deterministic", "standard", "creative", "factual"]))),
    }
    if d["temperature"] == 0.0:
        d["do_sample"] = False
    return d


@st.composite
def dataset_sections(draw, max_input_tokens: int) -> dict[str, Any]:
    source = draw(st.one_of(st.sampled_from(["builtin", "synthetic"]), text(min_size=1)))
    d: dict[str, Any] = {"source": source, "n": draw(st.integers(1, 10**5)), "shuffle": draw(st.booleans())}
    if source == "synthetic":
        d["synthetic_input_tokens"] = draw(st.integers(1, max_input_tokens))
    elif source != "builtin":
        d["column"] = draw(maybe(text()))
    return d


@st.composite
def experiment_configs(draw) -> ExperimentConfig:
    max_input = draw(st.integers(1, 4096))
    max_output = draw(st.integers(1, 4096))
    passthrough_keys = text(min_size=1).filter(lambda k: k not in COVERED_FROM_PRETRAINED_KWARGS)
    data = {
        "model": draw(st.one_of(st.sampled_from(["random:tiny", "gpt2", "models:/bench@champion"]), text(min_size=1))),
        "backend": "pytorch",
        "precision": draw(maybe(st.sampled_from(["fp32", "fp16", "bf16"]))),
        "max_input_tokens": max_input,
        "max_output_tokens": max_output,
        "random_seed": draw(st.integers(0, 2**32 - 1)),
        "n_trials": draw(st.integers(1, 1000)),
        "save_generated_text": draw(st.booleans()),
        "dataset": draw(dataset_sections(max_input)),
        "decoder": draw(decoder_sections(max_output)),
        "pytorch": draw(pytorch_sections()),
        "warmup": {"enabled": draw(st.booleans()), "n_batches": draw(st.integers(1, 100))},
        "baseline": {"enabled": draw(st.booleans()), "duration_s": draw(floats(0.0, 600.0, exclude_min=True))},
        "energy": {
            "gpu": draw(st.sampled_from(["auto", "nvml", "off"])),
            "codecarbon": draw(st.booleans()),
            "country_iso_code": draw(st.sampled_from(sorted(carbon_countries()))),
            "sample_interval_ms": draw(st.integers(10, 10_000)),
        },
        "cooldown": {
            "enabled": draw(st.booleans()),
            "tolerance_c": draw(floats(0.0, 1e9, exclude_min=True)),
            "timeout_s": draw(floats(0.0, 3600.0, exclude_min=True)),
        },
        "registry": draw(maybe(st.fixed_dictionaries(
            {"model_name": text(min_size=1), "alias": maybe(st.from_regex(r"\A[\w-]{1,40}\Z").filter(lambda a: not alias_problem(a))),
             "tags": st.dictionaries(text(), text(), max_size=3)}))),
        "experiment": draw(maybe(text(min_size=1))),
        "run_name": draw(maybe(text(min_size=1))),
        "tags": draw(st.dictionaries(text(), text(), max_size=4)),
        "passthrough_kwargs": draw(st.dictionaries(passthrough_keys, json_values, max_size=4)),
    }  # fmt: skip
    return ExperimentConfig.model_validate(data)


# Generating a whole config is slow (about 0.1 s): enough examples to cover every branch, CI-sized.
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(experiment_configs())
def test_params_round_trip(cfg):
    params = config_to_params(cfg)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
    rebuilt = config_from_params(params)
    assert rebuilt == cfg
    # Same types too (== says 1 == 1.0 == True): the dumps must match as JSON text.
    assert json.dumps(rebuilt.model_dump(mode="json"), sort_keys=True) == json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    assert config_to_params(rebuilt) == params
    assert config_hash(rebuilt) == config_hash(cfg)


@settings(PROPERTY, max_examples=30)
@given(experiment_configs(), experiment_configs())
def test_hash_changes_with_any_measured_field(cfg, other):
    """Copy one field of `other` into `cfg` at a time: the hash follows every measured field."""
    params, other_params = config_to_params(cfg), config_to_params(other)
    base_hash = config_hash(cfg)
    for key, value in other_params.items():
        if params.get(key) == value or key.split(".")[0] in UNHASHED_FIELDS:
            continue
        try:
            changed = config_from_params({**params, key: value})
        except ConfigError:
            continue  # this value breaks a rule together with cfg's other fields
        if changed != cfg:
            assert config_hash(changed) != base_hash, key


# --- the encoding, field by field ------------------------------------------------------------


def test_every_field_is_a_param_with_dotted_keys():
    cfg = ExperimentConfig(model="random:tiny", registry={"model_name": "bench"})
    params = config_to_params(cfg)
    for section in ("decoder", "pytorch", "dataset", "warmup", "baseline", "energy", "cooldown", "registry"):
        model = type(getattr(cfg, section))
        for name in model.model_fields:
            assert f"{section}.{name}" in params
    assert params["pytorch.bnb_4bit_quant_type"] == "None"
    assert params["decoder.top_p"] == "1.0" and params["decoder.do_sample"] == "True"
    assert params["tags"] == "{}" and params["registry.tags"] == "{}"


def test_unset_registry_is_one_param():
    params = config_to_params(ExperimentConfig(model="m"))
    assert params["registry"] == "None"
    assert not any(key.startswith("registry.") for key in params)
    assert config_from_params(params).registry is None


def test_dicts_are_compact_sorted_json():
    cfg = ExperimentConfig(
        model="m",
        tags={"b": "2", "a": "1"},
        pytorch={"device_map": "auto", "max_memory": {"cpu": "2GiB", 0: "1GiB"}},
        passthrough_kwargs={"rope_scaling": {"type": "linear", "factor": 2.0}},
    )
    params = config_to_params(cfg)
    assert params["tags"] == '{"a":"1","b":"2"}'
    assert params["pytorch.max_memory"] == '{"0":"1GiB","cpu":"2GiB"}'
    assert params["passthrough_kwargs"] == '{"rope_scaling":{"factor":2.0,"type":"linear"}}'
    assert config_from_params(params).pytorch.max_memory == {0: "1GiB", "cpu": "2GiB"}


def test_the_config_key_stays_free_for_mlflow_run():
    params = config_to_params(ExperimentConfig(model="m"))
    assert "config" not in params and "overrides" not in params
    # mlflow run logs `config` (the file path) beside ours: rebuilding ignores it.
    cfg = config_from_params({**params, "config": "examples/quickstart.yaml", "overrides": ""})
    assert cfg == ExperimentConfig(model="m")


def test_rebuilt_from_partial_params_fills_defaults():
    assert config_from_params({"model": "m", "decoder.top_p": "0.5"}) == ExperimentConfig(model="m", decoder={"top_p": 0.5})


def test_bad_params_are_config_errors():
    with pytest.raises(ConfigError, match="unknown field"):
        config_from_params({"model": "m", "decoder.top_pp": "0.5"})
    with pytest.raises(ConfigError, match=r"MLflow param tags = .* is not the JSON object"):
        config_from_params({"model": "m", "tags": "{not json"})
    with pytest.raises(ConfigError, match="registry is not a section"):
        config_from_params({"model": "m", "registry": "None", "registry.model_name": "x"})
    with pytest.raises(ConfigError, match="conflicts with the params under registry"):
        config_from_params({"model": "m", "registry.model_name": "x", "registry": "None"})


# --- MLflow's limits: refused, never truncated ------------------------------------------------


def test_value_over_the_limit_is_refused_with_field_and_limit():
    cfg = ExperimentConfig(model="m", passthrough_kwargs={"prompt_template": "x" * MAX_VALUE_LENGTH})
    with pytest.raises(ConfigError) as info:
        config_to_params(cfg)
    message = str(info.value)
    assert message.startswith("passthrough_kwargs is ") and f"MLflow allows {MAX_VALUE_LENGTH}" in message


def test_value_at_the_limit_is_kept_whole():
    model = "m" * MAX_VALUE_LENGTH
    params = config_to_params(ExperimentConfig(model=model))
    assert params["model"] == model
    with pytest.raises(ConfigError, match=r"model is 6001 characters"):
        config_to_params(ExperimentConfig(model=model + "m"))


def test_key_limits_and_reserved_keys():
    check_mlflow_limits({"k" * MAX_KEY_LENGTH: "v"})
    with pytest.raises(ConfigError, match=f"is {MAX_KEY_LENGTH + 1} characters; MLflow allows {MAX_KEY_LENGTH}"):
        check_mlflow_limits({"k" * (MAX_KEY_LENGTH + 1): "v"})
    with pytest.raises(ConfigError, match="'config' is reserved"):
        check_mlflow_limits({"config": "x.yaml"})


def test_limits_match_mlflow():
    validation = pytest.importorskip("mlflow.utils.validation")
    assert MAX_VALUE_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert MAX_KEY_LENGTH == validation.MAX_ENTITY_KEY_LENGTH


def test_text_none_means_unset_and_cannot_be_a_value():
    # "None" is how params write an unset field, so no field may hold the text "None" itself.
    assert config_from_params({"model": "m", "pytorch.revision": "None"}).pytorch.revision is None
    with pytest.raises(ValueError, match="write null"):
        ExperimentConfig(model="m", pytorch={"revision": "None"})


# --- config_hash -------------------------------------------------------------------------------


def test_hash_is_stable_across_processes_and_dict_order():
    cfg = ExperimentConfig(
        model="random:tiny",
        pytorch={"device_map": "auto", "max_memory": {0: "1GiB", "cpu": "2GiB"}},
        passthrough_kwargs={"b": 1, "a": [1, {"y": 2, "x": 1}]},
    )
    reordered = ExperimentConfig(
        model="random:tiny",
        pytorch={"max_memory": {"cpu": "2GiB", 0: "1GiB"}, "device_map": "auto"},
        passthrough_kwargs={"a": [1, {"x": 1, "y": 2}], "b": 1},
    )
    assert config_hash(cfg) == config_hash(reordered)
    assert len(config_hash(cfg)) == 16 and int(config_hash(cfg), 16) >= 0
    script = (
        "import sys, json\n"
        "from llem_mlflow.config.params import config_from_params, config_hash\n"
        "print(config_hash(config_from_params(json.loads(sys.stdin.read()))))\n"
    )
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(config_to_params(cfg)),
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )  # fmt: skip
        assert out.stdout.strip() == config_hash(cfg)


@pytest.mark.parametrize(
    "change",
    [{"model": "gpt2"}, {"max_output_tokens": 64}, {"random_seed": 1}, {"precision": "fp16"},
     {"decoder": {"top_p": 0.9}}, {"pytorch": {"batch_size": 2}}, {"dataset": {"n": 3}},
     {"passthrough_kwargs": {"low_cpu_mem_usage": True}}, {"energy": {"codecarbon": False}}],
)  # fmt: skip
def test_hash_changes_with_measured_fields(change):
    assert config_hash(ExperimentConfig(**{"model": "m", **change})) != config_hash(ExperimentConfig(model="m"))


def test_hash_ignores_tags_registry_and_where_the_run_goes():
    base = ExperimentConfig(model="m")
    labelled = ExperimentConfig(
        model="m", tags={"who": "me"}, registry={"model_name": "bench", "alias": "a"}, experiment="e", run_name="r"
    )
    assert config_hash(base) == config_hash(labelled)
