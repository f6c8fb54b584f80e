"""Prompt sources: built-in, JSONL/CSV/Parquet files, synthetic; and their errors."""

from __future__ import annotations

import json

import pytest

from llem_mlflow.bench.prompts import builtin_prompt_texts, load_prompts
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.errors import DatasetError


def config(**dataset) -> ExperimentConfig:
    return ExperimentConfig(model="random:tiny", dataset=dataset)


@pytest.fixture(scope="module")
def tokenizer():
    from llem_mlflow.bench.random_models import build_tokenizer

    return build_tokenizer()


def test_builtin_set_is_large_varied_and_distinct():
    texts = builtin_prompt_texts()
    assert len(texts) >= 200 and len(set(texts)) == len(texts)
    lengths = sorted(len(t.split()) for t in texts)
    assert lengths[0] <= 3 and lengths[-1] >= 150  # from a word to long passages
    assert len(set(lengths)) > 30


def test_builtin_takes_n_in_order(tokenizer):
    prompts = load_prompts(config(n=5), tokenizer)
    assert [p.index for p in prompts] == [0, 1, 2, 3, 4]
    assert [p.text for p in prompts] == builtin_prompt_texts()[:5]


def test_shuffle_is_seeded():
    first = load_prompts(ExperimentConfig(model="m", random_seed=1, dataset={"n": 20, "shuffle": True}), None)
    again = load_prompts(ExperimentConfig(model="m", random_seed=1, dataset={"n": 20, "shuffle": True}), None)
    other = load_prompts(ExperimentConfig(model="m", random_seed=2, dataset={"n": 20, "shuffle": True}), None)
    assert first == again and first != other
    assert [p.index for p in first] != list(range(20))


def test_fewer_prompts_than_n_cycles_keeping_source_indices(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}"}) for i in range(3)) + "\n")
    prompts = load_prompts(config(source=str(path), n=7), None)
    assert [p.index for p in prompts] == [0, 1, 2, 0, 1, 2, 0]
    assert prompts[3].text == "q0"


def test_jsonl_with_default_and_chosen_column(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "a", "q": "x"}\n\n{"text": "b", "q": "y"}\n')
    assert [p.text for p in load_prompts(config(source=str(path), n=2), None)] == ["a", "b"]
    assert [p.text for p in load_prompts(config(source=str(path), n=2, column="q"), None)] == ["x", "y"]


def test_prompt_column_wins_over_text(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text,prompt\nt1,p1\nt2,p2\n")
    assert [p.text for p in load_prompts(config(source=str(path), n=2), None)] == ["p1", "p2"]


def test_csv_skips_empty_rows(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,question\n1,"Why, though?"\n2,\n3,How?\n')
    prompts = load_prompts(config(source=str(path), n=2, column="question"), None)
    assert [p.text for p in prompts] == ["Why, though?", "How?"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["one", "two", "three"]}), path)
    assert [p.text for p in load_prompts(config(source=str(path), n=3), None)] == ["one", "two", "three"]


@pytest.mark.parametrize("n_tokens", [2, 7, 64])
def test_synthetic_prompts_have_exactly_n_tokens(tokenizer, n_tokens):
    cfg = ExperimentConfig(model="random:tiny", dataset={"source": "synthetic", "synthetic_input_tokens": n_tokens, "n": 5})
    prompts = load_prompts(cfg, tokenizer)
    assert len(prompts) == 5 and len({p.text for p in prompts}) == 5
    for p in prompts:
        assert len(tokenizer(p.text)["input_ids"]) == n_tokens
    assert load_prompts(cfg, tokenizer) == prompts  # deterministic from the seed


def test_synthetic_longer_than_max_input_tokens_is_refused(tokenizer):
    # The config refuses this too; model_copy skips validation to check the loader's own guard.
    cfg = ExperimentConfig(model="random:tiny", dataset={"source": "synthetic", "synthetic_input_tokens": 9})
    cfg = cfg.model_copy(update={"max_input_tokens": 8})
    with pytest.raises(DatasetError, match="max_input_tokens"):
        load_prompts(cfg, tokenizer)


def test_synthetic_with_no_room_for_text_is_refused(tokenizer):
    cfg = ExperimentConfig(model="random:tiny", dataset={"source": "synthetic", "synthetic_input_tokens": 1})
    with pytest.raises(DatasetError, match="special token"):
        load_prompts(cfg, tokenizer)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="file not found") as err:
        load_prompts(config(source=str(tmp_path / "nope.jsonl")), None)
    assert "nope.jsonl" in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DatasetError, match="no rows") as err:
        load_prompts(config(source=str(path)), None)
    assert "empty.jsonl" in str(err.value)


def test_missing_chosen_column_names_the_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="no column 'q'") as err:
        load_prompts(config(source=str(path), column="q"), None)
    assert "columns: a, b" in str(err.value) and "dataset.column" in str(err.value)


def test_no_default_column(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "x"}\n')
    with pytest.raises(DatasetError, match="neither a 'prompt' nor a 'text' column"):
        load_prompts(config(source=str(path)), None)


def test_column_empty_everywhere(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": ""}\n{"prompt": null}\n')
    with pytest.raises(DatasetError, match="empty in every row"):
        load_prompts(config(source=str(path)), None)


def test_unknown_extension(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("hello\n")
    with pytest.raises(DatasetError, match="unknown file type '.txt'"):
        load_prompts(config(source=str(path)), None)


def test_malformed_jsonl_names_the_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(DatasetError, match="bad.jsonl"):
        load_prompts(config(source=str(path)), None)
