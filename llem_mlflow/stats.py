"""Statistics over repeated trials: mean, spread, a 95% confidence interval, and drift.

One trial is one number: it gets a mean and nothing else, because a spread
computed from a single value would be made up.

The interval is for the mean over trials. Energy, throughput and latency are
positive and their trial-to-trial noise is multiplicative, so when every value
is positive the interval is computed on the log scale with the modified Cox
method for the mean of a log-normal quantity (Olsson 2005):

    y = ln(x);  exp( ybar + s^2/2  +/-  t(0.975, n-1) * sqrt(s^2/n + s^4 / (2(n-1))) )

It never goes below 0 (Student's t on the raw values gave -15.9..19.7 J/token
for two unlike trials) and widens upwards, where the uncertainty of a positive
quantity lies. When a value is 0 or negative the quantity is not positive and
the plain Student t interval on the raw values is used. Trials so far apart
that the upper bound overflows a float get no interval at all (trial_drift warns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95
# Trials whose coefficient of variation (std / mean) exceeds this disagree more than a quiet
# machine makes them: llem.warning.trial_drift.
MAX_TRIAL_CV = 0.05
# A monotone run of trials is a trend (warming, throttling, a neighbour starting) from this many
# trials on: with no trend, n values fall in a monotone order by chance with probability 2/n!
# (8% at 4 trials, 1.7% at 5); at 3 trials chance alone would do it one time in three.
MIN_TRIALS_FOR_TREND = 4


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
    low, high = mean_interval(values)
    out[f"{name}_std"] = std
    if math.isfinite(high):  # else both bounds are left out: an interval without an upper end says nothing
        out[f"{name}_ci95_low"] = low
        out[f"{name}_ci95_high"] = high
    if mean != 0.0:
        out[f"{name}_cv"] = std / abs(mean)
    return out


def sample_std(values: Sequence[float], mean: float) -> float:
    """Standard deviation with the n - 1 denominator (needs two or more values)."""
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% interval for the mean of two or more values: log-normal (modified Cox) when all are positive,
    else Student t."""
    n = len(values)
    t = t_quantile(0.5 + CONFIDENCE / 2, n - 1)
    if all(v > 0 for v in values):
        logs = [math.log(v) for v in values]
        mean_log = math.fsum(logs) / n
        var = sample_std(logs, mean_log) ** 2
        centre = mean_log + var / 2
        half = t * math.sqrt(var / n + var**2 / (2 * (n - 1)))
        return math.exp(centre - half), _exp_or_inf(centre + half)
    mean = math.fsum(values) / n
    half = t * sample_std(values, mean) / math.sqrt(n)
    return mean - half, mean + half


def _exp_or_inf(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:  # trials many orders of magnitude apart: the interval has no upper bound to speak of
        return math.inf


def drift(values: Sequence[float]) -> str | None:
    """Why these trial values cannot be trusted as repeats of one measurement, or None."""
    n = len(values)
    if n < 2:
        return None
    problems = []
    steps = [b - a for a, b in zip(values, values[1:])]
    if n >= MIN_TRIALS_FOR_TREND and (all(d > 0 for d in steps) or all(d < 0 for d in steps)):
        direction = "rose" if steps[0] > 0 else "fell"
        problems.append(f"{direction} in every trial ({_listed(values)})")
    mean = math.fsum(values) / n
    if mean != 0:
        cv = sample_std(values, mean) / abs(mean)
        if cv > MAX_TRIAL_CV:
            problems.append(f"coefficient of variation {cv:.0%} > {MAX_TRIAL_CV:.0%} ({_listed(values)})")
    return " and ".join(problems) or None


def _listed(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t distribution (scipy, a dependency of mlflow; imported lazily)."""
    from scipy.stats import t

    return float(t.ppf(p, dof))
