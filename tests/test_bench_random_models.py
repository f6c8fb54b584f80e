"""random:<preset> models: built offline, deterministic from the seed, cached on disk."""

from __future__ import annotations

import pytest

from llem_mlflow.bench.random_models import MARKER_FILE, PRESETS, random_model_dir
from llem_mlflow.errors import ModelLoadError


def test_tiny_builds_offline_and_deterministically(tmp_path, monkeypatch):
    dirs = []
    for name in ("a", "b"):
        monkeypatch.setenv("LLEM_CACHE_DIR", str(tmp_path / name))
        directory, built = random_model_dir("random:tiny", 7)
        assert built
        dirs.append(directory)
    for file in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (dirs[0] / file).read_bytes() == (dirs[1] / file).read_bytes(), file
    assert dirs[0].name == "tiny-seed7-v1" and dirs[0].parent == tmp_path / "a" / "random"


def test_seed_changes_the_weights_not_the_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tmp_path))
    one, _ = random_model_dir("random:tiny", 1)
    two, _ = random_model_dir("random:tiny", 2)
    assert (one / "model.safetensors").read_bytes() != (two / "model.safetensors").read_bytes()
    assert (one / "tokenizer.json").read_bytes() == (two / "tokenizer.json").read_bytes()


def test_second_call_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tmp_path))
    directory, built = random_model_dir("random:tiny", 3)
    weights = directory / "model.safetensors"
    before = (weights.stat().st_ino, weights.stat().st_mtime_ns)
    again, built_again = random_model_dir("random:tiny", 3)
    assert built and not built_again and again == directory
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == before
    # no temporary build directories are left behind
    assert [p.name for p in (tmp_path / "random").iterdir()] == [directory.name]


def test_tiny_is_well_under_a_million_parameters(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("LLEM_CACHE_DIR", str(tmp_path))
    directory, _ = random_model_dir("random:tiny", 42)
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert model.num_parameters() < 500_000
    assert (directory / MARKER_FILE).is_file()


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ModelLoadError) as err:
        random_model_dir("random:huge", 0)
    message = str(err.value)
    assert "random:huge" in message
    for name in PRESETS:
        assert f"random:{name}" in message


@pytest.mark.parametrize(
    ("preset", "model_type", "params"),
    [("llama-3.2-1b", "llama", 1_235_814_400), ("qwen2.5-0.5b", "qwen2", 494_032_768), ("gpt2", "gpt2", 124_439_808)],
)
def test_real_shaped_presets_match_the_published_sizes(preset, model_type, params):
    # Built on the meta device: shapes only, no memory, no weights written.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shapes = PRESETS[preset].shapes
    assert PRESETS[preset].model_type == model_type
    config = AutoConfig.for_model(model_type, **shapes)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert model.num_parameters() == params


def test_real_shaped_tokenizer_covers_the_model_vocabulary():
    from llem_mlflow.bench.random_models import build_tokenizer

    tokenizer = build_tokenizer(pad_to=50257)
    assert len(tokenizer) == 50257
    assert tokenizer.decode([50256]) == "<|reserved_" + str(50256 - 2048) + "|>"
