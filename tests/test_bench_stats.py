"""Latency percentiles and token totals (bench/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llem_mlflow.bench.generation import RequestRecord
from llem_mlflow.bench.stats import flops_per_output_token, latency_metrics, percentile


def record(ttft, itl, e2e, n_in=3, n_out=None):
    return RequestRecord(0, 0, 0, n_in, n_out if n_out is not None else len(itl) + 1, ttft, itl, e2e)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50), st.sampled_from([50, 90, 95, 99]))
def test_percentile_matches_numpy(values, q):
    assert percentile(sorted(values), q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


def test_metrics_by_hand():
    records = [record(10.0, [2.0, 4.0], 16.0), record(20.0, [6.0], 26.0, n_in=5)]
    m = latency_metrics(records)
    assert m["latency/ttft_ms_mean"] == 15.0 and m["latency/ttft_ms_p50"] == 15.0
    assert m["latency/itl_ms_mean"] == 4.0 and m["latency/itl_ms_p50"] == 4.0  # over all gaps
    assert m["latency/e2e_ms_p90"] == pytest.approx(25.0)
    assert m["tokens/input_total"] == 8 and m["tokens/output_total"] == 5
    assert {k.rsplit("_", 1)[1] for k in m if k.startswith("latency/ttft")} == {"mean", "p50", "p90", "p95", "p99"}


def test_unmeasured_latencies_are_absent():
    m = latency_metrics([record(None, [], 30.0, n_out=4)])
    assert "latency/e2e_ms_mean" in m and not any("ttft" in k or "itl" in k for k in m)
    assert latency_metrics([]) == {}


def test_single_token_outputs_have_no_itl():
    m = latency_metrics([record(5.0, [], 5.0)])
    assert "latency/ttft_ms_p99" in m and not any("itl" in k for k in m)


def test_flops_per_output_token_is_twice_the_non_embedding_params():
    from llem_mlflow.bench.loading import load_model
    from llem_mlflow.config.models import ExperimentConfig

    loaded = load_model(ExperimentConfig(model="random:tiny"))
    config = loaded.model.config
    embedding = config.vocab_size * config.hidden_size
    assert loaded.n_non_embedding_params == loaded.n_params - embedding  # untied head counts, lookup does not
    assert flops_per_output_token(loaded) == 2 * loaded.n_non_embedding_params
