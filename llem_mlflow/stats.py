"""Statistics over repeated trials: mean, spread and a 95% confidence interval.

One trial is one number: it gets a mean and nothing else, because a spread
computed from a single value would be made up. The interval is Student's t
(two-sided 95%) on the sample standard deviation (n - 1 denominator), which
is the right interval for the handful of trials a benchmark can afford.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95


def trial_summary(name: str, values: Sequence[float]) -> dict[str, float]:
    """`name` (mean) and, with two or more trials, `name_std`, `name_ci95_low/high`, `name_cv`.

    `name_cv` (std / mean) is left out when the mean is 0, where it has no meaning.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"trial_summary({name!r}): no values; a metric with no trials must be absent, not summarised")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"trial_summary({name!r}): values must be finite, got {values}")
    n = len(values)
    mean = math.fsum(values) / n
    out = {name: mean}
    if n == 1:
        return out
    std = sample_std(values, mean)
    half_width = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
    out[f"{name}_std"] = std
    out[f"{name}_ci95_low"] = mean - half_width
    out[f"{name}_ci95_high"] = mean + half_width
    if mean != 0.0:
        out[f"{name}_cv"] = std / abs(mean)
    return out


def sample_std(values: Sequence[float], mean: float) -> float:
    """Standard deviation with the n - 1 denominator (needs two or more values)."""
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t distribution (scipy, a dependency of mlflow; imported lazily)."""
    from scipy.stats import t

    return float(t.ppf(p, dof))
