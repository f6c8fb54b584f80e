"""The config loader: files, overrides, and messages a person can act on (asserted on their text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llem_mlflow.config import load_config
from llem_mlflow.config.loader import apply_overrides
from llem_mlflow.errors import ConfigError, LlemError


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert isinstance(info.value, LlemError) and info.value.exit_code == 2
    return str(info.value)


def test_minimal_yaml_loads(tmp_path):
    cfg = load_config(write(tmp_path, "model: random:tiny\n"))
    assert cfg.model == "random:tiny" and cfg.max_output_tokens == 128


def test_full_yaml_loads(tmp_path):
    text = """
model: random:tiny
precision: fp32
max_output_tokens: 16
dataset: {source: synthetic, n: 3, synthetic_input_tokens: 8}
decoder: {preset: creative, min_new_tokens: 16}
pytorch:
  batch_size: 2
  device_map: auto
  max_memory: {0: 10GiB, cpu: 30GiB}
  revision: "1234567"
registry: {model_name: bench, alias: champion, tags: {team: green}}
tags: {purpose: test}
passthrough_kwargs: {low_cpu_mem_usage: true}
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.decoder.top_p == 0.9 and cfg.decoder.min_new_tokens == 16
    assert cfg.pytorch.max_memory == {0: "10GiB", "cpu": "30GiB"}
    assert cfg.pytorch.revision == "1234567"
    assert cfg.registry.alias == "champion" and cfg.tags == {"purpose": "test"}


def test_unknown_key_names_dotted_path_and_suggestion(tmp_path):
    message = load_error(write(tmp_path, "model: m\npytorch:\n  batch_sise: 2\n"))
    assert str(tmp_path / "exp.yaml") in message
    assert 'pytorch.batch_sise: unknown field - did you mean "pytorch.batch_size"?' in message


def test_unknown_top_level_key_suggests(tmp_path):
    message = load_error(write(tmp_path, "model: m\ndatset: {n: 3}\n"))
    assert 'datset: unknown field - did you mean "dataset"?' in message


def test_unknown_key_with_no_close_match_lists_allowed_fields(tmp_path):
    message = load_error(write(tmp_path, "model: m\nwarmup: {zzz: 1}\n"))
    assert "warmup.zzz: unknown field - allowed here: enabled, n_batches" in message


def test_unknown_key_in_optional_section_suggests(tmp_path):
    message = load_error(write(tmp_path, "model: m\nregistry: {model_name: a, allias: b}\n"))
    assert 'registry.allias: unknown field - did you mean "registry.alias"?' in message


def test_wrong_range_names_path_value_and_constraint(tmp_path):
    message = load_error(write(tmp_path, "model: m\ndecoder:\n  top_p: 1.5\n"))
    assert "decoder.top_p: Input should be less than or equal to 1 (got 1.5)" in message


def test_wrong_type_names_path_value_and_constraint(tmp_path):
    message = load_error(write(tmp_path, "model: m\npytorch: {batch_size: two}\n"))
    assert "pytorch.batch_size: Input should be a valid integer" in message and "(got 'two')" in message


def test_wrong_literal_lists_the_choices(tmp_path):
    message = load_error(write(tmp_path, "model: m\nprecision: fp8\n"))
    assert "precision: Input should be 'fp32', 'fp16' or 'bf16' (got 'fp8')" in message


def test_number_where_text_is_needed_says_to_quote(tmp_path):
    message = load_error(write(tmp_path, "model: m\npytorch: {revision: 1234567}\n"))
    assert 'pytorch.revision: Input should be a valid string (got 1234567); YAML read it as a number: write it in quotes, e.g. "1234567"' in message


def test_every_problem_is_reported_at_once(tmp_path):
    message = load_error(write(tmp_path, "model: m\nmax_output_tokens: 0\ndecoder: {top_k: -1}\nfoo: 1\n"))
    assert "3 problem(s)" in message
    for path in ("max_output_tokens:", "decoder.top_k:", "foo: unknown field"):
        assert f"  - {path}" in message


def test_missing_model_is_named(tmp_path):
    assert "model: required field is missing" in load_error(write(tmp_path, "max_output_tokens: 3\n"))


def test_cross_field_rule_message_has_no_top_level_noise(tmp_path):
    message = load_error(write(tmp_path, "model: m\nmax_output_tokens: 4\ndecoder: {min_new_tokens: 5}\n"))
    assert "  - decoder.min_new_tokens (5) exceeds max_output_tokens (4)" in message
    assert "(top level)" not in message


def test_section_rule_names_the_section(tmp_path):
    message = load_error(write(tmp_path, "model: m\npytorch: {load_in_4bit: true, load_in_8bit: true}\n"))
    assert "pytorch: load_in_4bit and load_in_8bit are mutually exclusive" in message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "model: m\ndecoder:\n  top_p: [0.9\n  top_k: 3\n")
    message = load_error(path)
    assert message.startswith(f"{path}: invalid YAML at line ")
    line = int(message.split("at line ")[1].split(",")[0])
    assert 3 <= line <= 5


def test_yaml_syntax_error_exact_line(tmp_path):
    path = write(tmp_path, "model: m\n  bad: indent\n")
    assert load_error(path).startswith(f"{path}: invalid YAML at line 2, column 6: mapping values are not allowed here")


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.yaml")
    assert f"config file {str(tmp_path / 'nope.yaml')!r} not found" in message and "check the path" in message


def test_directory_instead_of_file(tmp_path):
    assert "is a directory" in load_error(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "~\n"])
def test_empty_file(tmp_path, text):
    message = load_error(write(tmp_path, text))
    assert "is empty" in message and "model:" in message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    message = load_error(write(tmp_path, text))
    assert f"must hold a mapping of fields (key: value), not a {kind}" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"model: \xff\xfe\n")
    assert "cannot be read" in load_error(path)


def test_json_file_loads(tmp_path):
    data = {"model": "random:tiny", "decoder": {"top_p": 0.8}, "pytorch": {"device_map": "auto", "max_memory": {"0": "1GiB"}}}
    cfg = load_config(write(tmp_path, json.dumps(data), "exp.json"))
    assert cfg.decoder.top_p == 0.8 and cfg.pytorch.max_memory == {0: "1GiB"}


def test_json_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, '{\n  "model": "m",\n}\n', "exp.json")
    assert load_error(path).startswith(f"{path}: invalid JSON at line 3, column 1")


def test_empty_json_file(tmp_path):
    assert "is empty" in load_error(write(tmp_path, "  \n", "exp.json"))


def test_json_list_refused(tmp_path):
    assert "not a list" in load_error(write(tmp_path, "[1]", "exp.json"))


# --- overrides ---------------------------------------------------------------------------


def test_overrides_change_fields_and_parse_yaml_scalars(tmp_path):
    path = write(tmp_path, "model: m\ndecoder: {top_p: 0.5}\n")
    cfg = load_config(
        path,
        ["decoder.top_p=0.9", "pytorch.use_cache=false", "max_output_tokens=16", "model=random:tiny",
         "tags={a: b}", "pytorch.revision='007'", "decoder.min_p="],
    )  # fmt: skip
    assert cfg.decoder.top_p == 0.9 and cfg.pytorch.use_cache is False and cfg.max_output_tokens == 16
    assert cfg.model == "random:tiny" and cfg.tags == {"a": "b"} and cfg.pytorch.revision == "007"
    assert cfg.decoder.min_p is None


def test_override_value_may_contain_equals(tmp_path):
    cfg = load_config(write(tmp_path, "model: m\n"), ["tags.query=a=b"])
    assert cfg.tags == {"query": "a=b"}


def test_override_creates_sections(tmp_path):
    cfg = load_config(write(tmp_path, "model: m\n"), ["registry.model_name=bench", "registry.tags.k=v"])
    assert cfg.registry.model_name == "bench" and cfg.registry.tags == {"k": "v"}


def test_override_fills_an_empty_section(tmp_path):
    cfg = load_config(write(tmp_path, "model: m\npytorch:\n"), ["pytorch.batch_size=4"])
    assert cfg.pytorch.batch_size == 4


def test_later_override_wins(tmp_path):
    cfg = load_config(write(tmp_path, "model: m\n"), ["decoder.top_k=5", "decoder.top_k=7"])
    assert cfg.decoder.top_k == 7


@pytest.mark.parametrize("bad", ["decoder.top_p", "=3", ".top_p=3", "decoder..top_p=1", "decoder.=1"])
def test_bad_override_syntax(tmp_path, bad):
    message = load_error(write(tmp_path, "model: m\n"), (bad,))
    assert f"override {bad!r} must look like section.field=value, e.g. decoder.top_p=0.9" in message


def test_override_into_a_scalar_is_refused(tmp_path):
    message = load_error(write(tmp_path, "model: m\n"), ("model.name=x",))
    assert "override 'model.name=x': model is not a section, it holds 'm'" in message


def test_override_with_bad_yaml_value(tmp_path):
    message = load_error(write(tmp_path, "model: m\n"), ("decoder.top_p=[1,",))
    assert message.startswith("override decoder.top_p: invalid YAML at line 1")


def test_override_unknown_field_is_reported_like_a_file_key(tmp_path):
    message = load_error(write(tmp_path, "model: m\n"), ("decoder.top_pp=0.9",))
    assert 'decoder.top_pp: unknown field - did you mean "decoder.top_p"?' in message


def test_override_out_of_range(tmp_path):
    message = load_error(write(tmp_path, "model: m\n"), ("decoder.temperature=3",))
    assert "decoder.temperature: Input should be less than or equal to 2 (got 3)" in message


def test_apply_overrides_leaves_other_keys():
    data = {"model": "m", "decoder": {"top_k": 3}}
    apply_overrides(data, ["decoder.top_p=0.5"])
    assert data == {"model": "m", "decoder": {"top_k": 3, "top_p": 0.5}}


def test_shipped_examples_validate():
    import yaml

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        if "sweep" in yaml.safe_load(path.read_text()):
            continue  # a study file (base config + sweep), checked by the sweep tests
        if path.name.startswith("bad-"):
            with pytest.raises(ConfigError):
                load_config(path)
        else:
            load_config(path)


def test_empty_sections_mean_defaults(tmp_path):
    # every line of a section commented out leaves YAML null: no settings, not an error
    cfg = load_config(write(tmp_path, "model: m\npytorch:\n  # batch_size: 2\ndecoder:\ntags:\nregistry:\n"))
    assert cfg.pytorch.batch_size is None and cfg.decoder.top_k == 50 and cfg.tags == {} and cfg.registry is None


@pytest.mark.parametrize("written", ["off", "Off", "no", "false", "'off'"])
def test_unquoted_off_is_read_as_off_not_refused_as_false(tmp_path, written):
    # Issue 11 item 11: YAML 1.1 reads an unquoted off/no/false as the boolean false.
    cfg = load_config(write(tmp_path, f"model: random:tiny\nenergy: {{gpu: {written}}}\n"))
    assert cfg.energy.gpu == "off"
    assert load_config(write(tmp_path, "model: random:tiny\n", "o.yaml"), ("energy.gpu=off",)).energy.gpu == "off"


def test_unquoted_on_names_the_modes_to_write(tmp_path):
    message = load_error(write(tmp_path, "model: random:tiny\nenergy: {gpu: on}\n"))
    assert "energy.gpu: YAML read on/yes/true as the boolean true, which names no mode here: write auto or nvml" in message


def test_off_survives_the_params_round_trip(tmp_path):
    from llem_mlflow.config.params import config_from_params, config_to_params

    cfg = load_config(write(tmp_path, "model: random:tiny\nenergy: {gpu: off}\nmeasure: {prefill_split: true}\n"))
    params = config_to_params(cfg)
    assert params["energy.gpu"] == "off" and params["measure.prefill_split"] == "True"
    assert config_from_params(params) == cfg
