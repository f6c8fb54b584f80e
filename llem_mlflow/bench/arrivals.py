"""The seeded arrival schedule of an open-loop online trial: when each request is sent.

Offsets are seconds after the first arrival, which is at 0. The gaps between
arrivals are drawn from one `random.Random(seed)`, so a seed gives the same
schedule on every machine and Python version:

    poisson   exponential gaps of mean 1/rate (a Poisson process)
    constant  every gap exactly 1/rate
    gamma     gamma gaps of shape `burstiness` and mean 1/rate (shape 1 is Poisson;
              below 1 the arrivals come in bursts, above 1 more evenly)

With `n_requests` the schedule has that many arrivals; with `duration_s`, every
arrival that falls before `duration_s`.
"""

from __future__ import annotations

import random

from llem_mlflow.config.models import MAX_ONLINE_REQUESTS


def arrival_offsets(online, seed: int) -> list[float]:
    """Seconds after the first arrival at which each request arrives (open loop: `request_rate` set)."""
    rate = online.request_rate
    if rate is None:
        raise ValueError("an arrival schedule needs online.request_rate (max_concurrency has none: finishes send requests)")
    rng = random.Random(seed)
    kind = online.arrival or "poisson"

    def gap() -> float:
        if kind == "constant":
            return 1.0 / rate
        if kind == "gamma":
            return rng.gammavariate(online.burstiness, 1.0 / (rate * online.burstiness))
        return rng.expovariate(rate)

    offsets = [0.0]
    while len(offsets) < MAX_ONLINE_REQUESTS:
        if online.n_requests is not None and len(offsets) >= online.n_requests:
            break
        following = offsets[-1] + gap()
        if online.duration_s is not None and following >= online.duration_s:
            break
        offsets.append(following)
    return offsets
