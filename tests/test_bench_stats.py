"""Latency percentiles and token totals (bench/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llem_mlflow.bench.generation import RequestRecord
from llem_mlflow.bench.stats import flops_per_output_token, latency_metrics, percentile


def record(ttft, itl, e2e, n_in=3, n_out=None, batch=0, batch_ms=None, trial=1):
    n = n_out if n_out is not None else len(itl) + 1
    return RequestRecord(0, batch, 0, n_in, n, ttft, itl, e2e, batch_ms=batch_ms, trial=trial)


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
    assert {k.rsplit("_", 1)[1] for k in m if k.startswith("latency/ttft")} == {"mean", "p50", "p90", "p95", "p99", "std", "cv"}


def test_every_latency_family_has_its_spread():
    # ttft 10, 20: mean 15, sample std sqrt(50); e2e 16, 26: mean 21, std sqrt(50)
    m = latency_metrics([record(10.0, [2.0, 4.0], 16.0, batch_ms=17.0), record(20.0, [6.0], 26.0, batch=1, batch_ms=27.0)])
    assert m["latency/ttft_ms_std"] == pytest.approx(50**0.5) and m["latency/ttft_ms_cv"] == pytest.approx(50**0.5 / 15)
    assert m["latency/e2e_ms_std"] == pytest.approx(50**0.5) and m["latency/e2e_ms_cv"] == pytest.approx(50**0.5 / 21)
    assert m["latency/itl_ms_std"] == pytest.approx(2.0)  # gaps 2, 4, 6
    for family in ("ttft", "itl", "tpot", "e2e", "batch"):
        values = [v for k, v in m.items() if k.startswith(f"latency/{family}_ms_")]
        assert {f"latency/{family}_ms_std", f"latency/{family}_ms_cv"} <= set(m), family
        assert m[f"latency/{family}_ms_cv"] == pytest.approx(m[f"latency/{family}_ms_std"] / m[f"latency/{family}_ms_mean"])
        assert values
    # one value has no spread: absent, never 0
    single = latency_metrics([record(5.0, [1.0], 6.0)])
    assert "latency/ttft_ms_p50" in single and "latency/ttft_ms_std" not in single and "latency/ttft_ms_cv" not in single


def test_tpot_is_per_request_and_absent_below_two_tokens():
    # (e2e - ttft) / (n - 1): (16 - 10) / 2 = 3 and (26 - 20) / 1 = 6; the 1-token request has none
    records = [record(10.0, [2.0, 4.0], 16.0), record(20.0, [6.0], 26.0), record(30.0, [], 30.0)]
    assert [r.tpot_ms for r in records] == [3.0, 6.0, None]
    m = latency_metrics(records)
    assert m["latency/tpot_ms_mean"] == 4.5 and m["latency/tpot_ms_p50"] == 4.5 and m["latency/tpot_ms_p90"] == pytest.approx(5.7)
    # TPOT weighs each request once; ITL weighs each gap: the two differ here (4.5 vs 4.0)
    assert m["latency/itl_ms_mean"] == 4.0
    assert not any("tpot" in k for k in latency_metrics([record(30.0, [], 30.0)]))
    assert not any("tpot" in k for k in latency_metrics([record(None, [], 30.0, n_out=4)]))  # beam search


def test_batch_latency_counts_each_generate_call_once():
    # three rows of batch 0 (call 40 ms), one row of batch 1 (call 10 ms), and batch 0 again in trial 2 (call 20 ms)
    records = [record(5.0, [1.0], 6.0, batch=0, batch_ms=40.0) for _ in range(3)]
    records += [record(5.0, [1.0], 6.0, batch=1, batch_ms=10.0), record(5.0, [1.0], 6.0, batch=0, batch_ms=20.0, trial=2)]
    m = latency_metrics(records)
    assert m["latency/batch_ms_mean"] == pytest.approx(70.0 / 3)  # not (3 x 40 + 10 + 20) / 5
    assert m["latency/batch_ms_p50"] == 20.0


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
