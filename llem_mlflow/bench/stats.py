"""Latency percentiles and token totals from per-request records (metric names are a contract)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from llem_mlflow.stats import sample_std

PERCENTILES = (50, 90, 95, 99)


def latency_metrics(records: Sequence) -> dict[str, float]:
    """latency/{ttft,itl,tpot,e2e,batch}_ms_* and tokens/{input,output}_total.

    A latency that was not measured (TTFT/ITL/TPOT under beam search, TPOT of one-token
    requests) has no keys at all. `batch` is one value per generate() call, not per request
    (online records have no batches, so no `batch`).
    """
    if not records:
        return {}
    metrics: dict[str, float] = {}
    metrics.update(summarize("latency/ttft_ms", [r.ttft_ms for r in records if r.ttft_ms is not None]))
    metrics.update(summarize("latency/itl_ms", [gap for r in records for gap in r.itl_ms]))
    metrics.update(summarize("latency/tpot_ms", [r.tpot_ms for r in records if r.tpot_ms is not None]))
    metrics.update(summarize("latency/e2e_ms", [r.e2e_ms for r in records]))
    calls = {(r.trial, r.batch_index): r.batch_ms for r in records if getattr(r, "batch_ms", None) is not None}
    metrics.update(summarize("latency/batch_ms", calls.values()))
    metrics["tokens/input_total"] = float(sum(r.input_tokens for r in records))
    metrics["tokens/output_total"] = float(sum(r.output_tokens for r in records))
    return metrics


def summarize(prefix: str, values: Iterable[float]) -> dict[str, float]:
    """{prefix}_mean, _p50.._p99 and the spread _std (n - 1) and _cv (std / mean); empty without values.

    One value has no spread: _std and _cv are then absent (as is _cv for a mean of 0)."""
    ordered = sorted(values)
    if not ordered:
        return {}
    n = len(ordered)
    mean = math.fsum(ordered) / n
    out = {f"{prefix}_mean": mean}
    for q in PERCENTILES:
        out[f"{prefix}_p{q}"] = percentile(ordered, q)
    if n > 1:
        std = sample_std(ordered, mean)
        out[f"{prefix}_std"] = std
        if mean != 0:
            out[f"{prefix}_cv"] = std / abs(mean)
    return out


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on sorted values."""
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def flops_per_output_token(loaded) -> float:
    """Estimated forward FLOPs per generated token: 2 x non-embedding parameters.

    One multiply-add per weight of every matmul; attention over the context
    and the embedding lookups are left out (an estimate, see docs/metrics.md).
    """
    return 2.0 * loaded.n_non_embedding_params


def model_metrics(loaded) -> dict[str, float]:
    return {"flops/per_output_token": float(flops_per_output_token(loaded)), "model/params": float(loaded.n_params)}
