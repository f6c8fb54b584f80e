"""Generation: every generation field reaches generate(), and the per-request timings and counts hold."""

from __future__ import annotations

import json

import pytest

from llem_mlflow.bench.generation import Generator
from llem_mlflow.bench.loading import load_model
from llem_mlflow.bench.prompts import load_prompts
from llem_mlflow.bench.stats import latency_metrics
from llem_mlflow.config.models import ExperimentConfig


@pytest.fixture(scope="module")
def loaded():
    return load_model(ExperimentConfig(model="random:tiny"))


def config(**fields) -> ExperimentConfig:
    base = {"max_input_tokens": 32, "max_output_tokens": 6, "dataset": {"n": 4}}
    return ExperimentConfig(model="random:tiny", **{**base, **fields})


def run(loaded, cfg):
    generator = Generator(loaded, cfg)
    records = [r for b in generator.batches(load_prompts(cfg, loaded.tokenizer)) for r in generator.run_batch(b)]
    return generator, records


def used(generator) -> dict:
    resolved = generator.resolved_generation_config()
    json.dumps(resolved)
    json.dumps(generator.generate_kwargs)
    return resolved


def test_greedy_defaults_pass_no_sampling_fields(loaded):
    generator = Generator(loaded, config(decoder={"do_sample": False}))
    kwargs = generator.generate_kwargs
    assert kwargs["do_sample"] is False and kwargs["max_new_tokens"] == 6
    assert not {"temperature", "top_k", "top_p", "min_p", "num_beams", "use_cache"} & set(kwargs)
    assert used(generator)["max_new_tokens"] == 6


def test_sampling_fields_reach_generate(loaded):
    cfg = config(decoder={"temperature": 0.7, "top_k": 11, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.3})
    generator, records = run(loaded, cfg)
    resolved = used(generator)
    for name, value in {"do_sample": True, "temperature": 0.7, "top_k": 11, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.3}.items():
        assert generator.generate_kwargs[name] == value and resolved[name] == value, name
    assert len(records) == 4


def test_sampling_is_seeded(loaded):
    cfg = config(save_generated_text=True, dataset={"n": 2})
    texts = [r.text for r in run(loaded, cfg)[1]]
    assert [r.text for r in run(loaded, cfg)[1]] == texts
    other = [r.text for r in run(loaded, cfg.model_copy(update={"random_seed": 1}))[1]]
    assert other != texts


def test_min_new_tokens_equal_to_max_gives_exact_output_counts(loaded):
    cfg = config(max_output_tokens=5, decoder={"min_new_tokens": 5}, pytorch={"batch_size": 2})
    generator, records = run(loaded, cfg)
    assert used(generator)["min_new_tokens"] == 5
    assert [r.output_tokens for r in records] == [5, 5, 5, 5]
    assert latency_metrics(records)["tokens/output_total"] == 20


def test_timings_are_consistent(loaded):
    _, records = run(loaded, config(decoder={"min_new_tokens": 6}, pytorch={"batch_size": 2}))
    for r in records:
        assert 0 < r.ttft_ms <= r.e2e_ms
        assert len(r.itl_ms) == r.output_tokens - 1 and all(gap >= 0 for gap in r.itl_ms)
        assert r.ttft_ms + sum(r.itl_ms) == pytest.approx(r.e2e_ms)
    assert [(r.request_index, r.batch_index, r.prompt_index) for r in records] == [(0, 0, 0), (1, 0, 1), (2, 1, 2), (3, 1, 3)]


def test_input_tokens_exclude_padding_and_respect_truncation(loaded):
    cfg = config(max_input_tokens=20, pytorch={"batch_size": 4})
    prompts = load_prompts(cfg, loaded.tokenizer)
    batch = Generator(loaded, cfg).batches(prompts)[0]
    expected = [min(len(loaded.tokenizer(p.text)["input_ids"]), 20) for p in prompts]
    assert batch.input_tokens == expected and len(set(expected)) > 1  # rows of different lengths
    assert batch.input_ids.shape[1] == max(expected)
    assert batch.attention_mask[:, -1].all()  # left padding: every row ends at the last position


def test_output_tokens_stop_at_eos(loaded):
    # Make the token that greedy decoding emits third in row 0 the EOS: row 0 then stops there.
    import copy

    cfg = config(max_output_tokens=6, decoder={"do_sample": False}, pytorch={"batch_size": 2}, save_generated_text=True)
    generator = Generator(loaded, cfg)
    batch = generator.batches(load_prompts(cfg, loaded.tokenizer))[0]
    out = loaded.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **generator.generate_kwargs)
    row0 = out[0, batch.input_ids.shape[1] :].tolist()
    new_eos = row0[2]
    original = copy.deepcopy(loaded.model.generation_config)
    try:
        loaded.model.generation_config.eos_token_id = new_eos
        records = Generator(loaded, cfg).run_batch(batch)
    finally:
        loaded.model.generation_config = original
    assert records[0].output_tokens == row0.index(new_eos) + 1 <= 3
    assert len(records[0].itl_ms) == records[0].output_tokens - 1


def test_beams_measure_end_to_end_only(loaded):
    cfg = config(decoder={"do_sample": False}, pytorch={"num_beams": 2, "early_stopping": True, "length_penalty": 0.5})
    generator, records = run(loaded, cfg)
    resolved = used(generator)
    assert (resolved["num_beams"], resolved["early_stopping"], resolved["length_penalty"]) == (2, True, 0.5)
    for r in records:
        assert r.ttft_ms is None and r.itl_ms == [] and r.e2e_ms > 0
    metrics = latency_metrics(records)
    assert "latency/e2e_ms_p50" in metrics and not any(k.startswith(("latency/ttft", "latency/itl")) for k in metrics)


def test_no_repeat_ngram_size_reaches_generate(loaded):
    cfg = config(max_output_tokens=12, decoder={"do_sample": False, "min_new_tokens": 12}, pytorch={"no_repeat_ngram_size": 1})
    generator = Generator(loaded, cfg)
    assert used(generator)["no_repeat_ngram_size"] == 1
    batch = generator.batches(load_prompts(cfg, loaded.tokenizer))[0]
    out = loaded.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **generator.generate_kwargs)
    prompt, new = out[0, : batch.input_ids.shape[1]].tolist(), out[0, batch.input_ids.shape[1] :].tolist()
    # size 1: a new token never repeats one already in the sequence (prompt included)
    assert len(new) == 12 and len(set(new)) == len(new) and not set(new) & set(prompt)


def test_prompt_lookup_reaches_generate(loaded):
    cfg = config(decoder={"do_sample": False, "min_new_tokens": 6}, pytorch={"prompt_lookup_num_tokens": 3})
    generator, records = run(loaded, cfg)
    assert used(generator)["prompt_lookup_num_tokens"] == 3
    assert [r.output_tokens for r in records] == [6, 6, 6, 6]
    assert all(r.ttft_ms is not None and r.ttft_ms <= r.e2e_ms for r in records)


def test_static_cache_reaches_generate(loaded):
    cfg = config(decoder={"do_sample": False}, pytorch={"cache_implementation": "static", "batch_size": 2})
    generator, records = run(loaded, cfg)
    assert used(generator)["cache_implementation"] == "static"
    assert len(records) == 4 and all(r.ttft_ms <= r.e2e_ms for r in records)


def test_use_cache_false_gives_the_same_greedy_tokens(loaded):
    on = config(decoder={"do_sample": False}, save_generated_text=True, dataset={"n": 2})
    off = on.model_copy(update={"pytorch": on.pytorch.model_copy(update={"use_cache": False})})
    generator, records = run(loaded, off)
    assert generator.generate_kwargs["use_cache"] is False and used(generator)["use_cache"] is False
    assert [r.text for r in records] == [r.text for r in run(loaded, on)[1]]


def test_text_only_when_asked(loaded):
    assert all(r.text is None for r in run(loaded, config(dataset={"n": 1}))[1])
    assert isinstance(run(loaded, config(dataset={"n": 1}, save_generated_text=True))[1][0].text, str)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_generation_on_gpu_times_every_request():
    loaded = load_model(ExperimentConfig(model="random:tiny"))
    assert loaded.device == "cuda:0"
    _, records = run(loaded, config(decoder={"min_new_tokens": 6}, pytorch={"batch_size": 2}))
    assert [r.output_tokens for r in records] == [6, 6, 6, 6]
    assert all(0 < r.ttft_ms <= r.e2e_ms for r in records)


# --- issue 11 item 6 and issue 13: per-chunk ITL, the EOS generate() uses, the call time, prefill-only ---
def test_streamed_chunks_of_several_tokens_make_one_gap_each():
    import torch

    from llem_mlflow.bench.generation import StepClock, chunk_times

    clock = StepClock()
    # the prompt, then chunks of 1, 3 and 2 tokens (prompt lookup accepts several at once), at 10, 20, 35, 45 s
    clock.times, clock.chunks = [0.0, 10.0, 20.0, 35.0], [torch.zeros(1, 5), torch.zeros(1, 1), torch.zeros(1, 3), torch.zeros(1, 2)]
    assert clock.arrivals() == [(10.0, 1), (20.0, 4), (35.0, 6)]
    assert chunk_times(clock.arrivals(), 6) == [10.0, 20.0, 35.0]  # gaps 10, 15: never a 0 s gap inside a chunk
    assert chunk_times(clock.arrivals(), 3) == [10.0, 20.0]  # a row that ended inside the second chunk
    assert chunk_times(clock.arrivals(), 1) == [10.0]


def test_prompt_lookup_itl_is_per_streamed_chunk(loaded):
    # Greedy random:tiny with prompt lookup accepts several tokens at once on some of these 8 prompts.
    cfg = config(max_input_tokens=64, max_output_tokens=24, dataset={"n": 8}, decoder={"do_sample": False, "min_new_tokens": 24},
                 pytorch={"prompt_lookup_num_tokens": 3})  # fmt: skip
    _, records = run(loaded, cfg)
    assert all(r.output_tokens == 24 for r in records)
    assert any(len(r.itl_ms) < r.output_tokens - 1 for r in records)  # some chunks carried several tokens
    for r in records:
        assert all(gap > 0 for gap in r.itl_ms)  # no 0 ms gap between tokens that arrived together
        assert r.ttft_ms + sum(r.itl_ms) == pytest.approx(r.e2e_ms)


def test_output_tokens_use_the_eos_of_the_generation_config_generate_uses(loaded):
    # generate() stops at the generation config's EOS only; a tokenizer EOS it never reads must not cut the count.
    import copy

    cfg = config(max_output_tokens=6, decoder={"do_sample": False}, pytorch={"batch_size": 2})
    generator = Generator(loaded, cfg)
    batch = generator.batches(load_prompts(cfg, loaded.tokenizer))[0]
    out = loaded.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **generator.generate_kwargs)
    emitted = out[0, batch.input_ids.shape[1] :].tolist()[1]
    original_config, original_eos = copy.deepcopy(loaded.model.generation_config), loaded.tokenizer.eos_token
    try:
        loaded.model.generation_config.eos_token_id = None
        loaded.tokenizer.eos_token = loaded.tokenizer.convert_ids_to_tokens(emitted)
        generator = Generator(loaded, cfg)
        assert generator.resolved_generation_config()["eos_token_id"] is None
        records = generator.run_batch(batch)
    finally:
        loaded.model.generation_config = original_config
        loaded.tokenizer.eos_token = original_eos
    assert [r.output_tokens for r in records] == [6, 6]


def test_batch_time_is_the_generate_call_shared_by_its_rows(loaded):
    _, records = run(loaded, config(decoder={"min_new_tokens": 6}, pytorch={"batch_size": 2}))
    for batch in (0, 1):
        rows = [r for r in records if r.batch_index == batch]
        assert len({r.batch_ms for r in rows}) == 1 and len({r.ttft_ms for r in rows}) == 1  # rows share both
        assert all(r.e2e_ms <= r.batch_ms for r in rows)
        assert rows[0].tpot_ms == pytest.approx((rows[0].e2e_ms - rows[0].ttft_ms) / 5)


def test_prefill_only_generates_one_token_on_the_same_batches(loaded):
    cfg = config(
        max_output_tokens=6, decoder={"do_sample": False, "min_new_tokens": 6}, pytorch={"batch_size": 2, "cache_implementation": "static"}
    )
    generator = Generator(loaded, cfg)
    prefill = generator.prefill_only()
    assert generator.generate_kwargs["max_new_tokens"] == 6 and generator.generate_kwargs["min_new_tokens"] == 6  # untouched
    without_min = {k: v for k, v in generator.generate_kwargs.items() if k != "min_new_tokens"}
    assert prefill.generate_kwargs == {**without_min, "max_new_tokens": 1}
    batches = generator.batches(load_prompts(cfg, loaded.tokenizer))
    records = [r for b in batches for r in prefill.run_batch(b)]
    assert [r.output_tokens for r in records] == [1, 1, 1, 1]
    assert all(r.itl_ms == [] and r.tpot_ms is None and r.ttft_ms == r.e2e_ms <= r.batch_ms for r in records)


def test_batches_count_the_prompts_they_cut(loaded):
    cfg = config(max_input_tokens=6, dataset={"n": 4})
    prompts = load_prompts(cfg, loaded.tokenizer)
    generator = Generator(loaded, cfg)
    batches = generator.batches(prompts)
    full = [len(loaded.tokenizer(p.text)["input_ids"]) for p in prompts]
    cut = [n for n in full if n > 6]
    assert cut  # the builtin prompts are longer than 6 tokens
    t = generator.truncation
    assert (t.prompts, t.truncated, t.longest, t.limit) == (4, len(cut), max(cut), 6)
    assert max(n for b in batches for n in b.input_tokens) == 6
    assert generator.truncation.tags() == {
        "llem.warning.truncated_prompts": f"{len(cut)} of 4 measured prompts were longer than max_input_tokens "
        f"(6 tokens) and were cut to it; the longest had {max(cut)} tokens"
    }
    roomy = Generator(loaded, config(max_input_tokens=512))
    roomy.batches(prompts)
    assert roomy.truncation.truncated == 0 and roomy.truncation.tags() == {}  # nothing cut: no tag
