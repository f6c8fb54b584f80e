"""Latency percentiles and token totals from per-request records (metric names are a contract)."""

from __future__ import annotations

import math
import resource
from collections.abc import Iterable, Sequence

PERCENTILES = (50, 90, 95, 99)


def latency_metrics(records: Sequence) -> dict[str, float]:
    """latency/{ttft,itl,e2e}_ms_{mean,p50,p90,p95,p99} and tokens/{input,output}_total.

    A latency that was not measured (TTFT/ITL under beam search) has no keys at all.
    """
    if not records:
        return {}
    metrics: dict[str, float] = {}
    metrics.update(summarize("latency/ttft_ms", [r.ttft_ms for r in records if r.ttft_ms is not None]))
    metrics.update(summarize("latency/itl_ms", [gap for r in records for gap in r.itl_ms]))
    metrics.update(summarize("latency/e2e_ms", [r.e2e_ms for r in records]))
    metrics["tokens/input_total"] = float(sum(r.input_tokens for r in records))
    metrics["tokens/output_total"] = float(sum(r.output_tokens for r in records))
    return metrics


def summarize(prefix: str, values: Iterable[float]) -> dict[str, float]:
    """{prefix}_mean and {prefix}_p50..p99; empty when there are no values."""
    ordered = sorted(values)
    if not ordered:
        return {}
    out = {f"{prefix}_mean": math.fsum(ordered) / len(ordered)}
    for q in PERCENTILES:
        out[f"{prefix}_p{q}"] = percentile(ordered, q)
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


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
