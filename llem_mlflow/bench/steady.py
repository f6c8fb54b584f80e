"""The steady state of an online trial: occupancy over time, the steady window, load figures in it.

Occupancy: from the per-request times, exactly (no sampling): a request is
*waiting* from its arrival to its admission and *in flight* from its admission
to its finish. `occupancy()` gives both counts after every event.

The steady window excludes ramp-up and drain:
  * plateau: the time-weighted median of the in-flight count between the first
    and the last arrival (at least 1);
  * start: the first arrival at or after the moment the in-flight count first
    reaches the plateau;
  * end: the last arrival (after it the load only drains).
It is half-open, [start, end): the arrival at `start` is inside, the one at `end`
is not. Both edges are arrivals, so the energy meter's readings taken at
arrivals (bench/online.py) bound it exactly.

All times are seconds after the first arrival.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Event order at one instant: an arrival, then an admission, then a finish.
_ARRIVE, _ADMIT, _FINISH = 0, 1, 2


@dataclass(frozen=True)
class SteadyWindow:
    start_s: float
    end_s: float
    plateau: int  # the in-flight level that counts as reached
    first: int  # request_index of the arrival that opens the window
    last: int  # request_index of the arrival that closes it (not inside)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def occupancy(records: Sequence) -> list[tuple[float, int, int]]:
    """(time_s, in flight, waiting) after every arrival, admission and finish, in time order."""
    events = []
    for r in records:
        events += [(r.arrival_s, _ARRIVE), (r.admitted_s, _ADMIT), (r.finished_s, _FINISH)]
    events.sort()
    in_flight = waiting = 0
    out = []
    for t, kind in events:
        if kind == _ARRIVE:
            waiting += 1
        elif kind == _ADMIT:
            waiting, in_flight = waiting - 1, in_flight + 1
        else:
            in_flight -= 1
        out.append((t, in_flight, waiting))
    return out


def steady_window(records: Sequence) -> SteadyWindow | str:
    """The steady window of one trial (records in arrival order), or why there is none."""
    if len(records) < 3:
        return f"{len(records)} request(s): a steady window needs at least 3 arrivals"
    steps = occupancy(records)
    first_arrival, last_arrival = records[0].arrival_s, records[-1].arrival_s
    plateau = max(1, int(weighted_median(steps, first_arrival, last_arrival, column=1)))
    reached = next((t for t, in_flight, _ in steps if in_flight >= plateau), math.inf)
    opening = next((r for r in records if r.arrival_s >= reached), None)
    closing = records[-1]
    if opening is None or opening.request_index >= closing.request_index - 1 or closing.arrival_s <= opening.arrival_s:
        return (
            f"the in-flight count reached its plateau ({plateau}) at {reached:.3f} s, too late: fewer than 2 "
            f"arrivals followed before the last one at {last_arrival:.3f} s (send more requests or a higher rate)"
        )
    return SteadyWindow(opening.arrival_s, closing.arrival_s, plateau, opening.request_index, closing.request_index)


def window_load(records: Sequence, window: SteadyWindow, slo=None) -> tuple[dict[str, float], dict[str, str]]:
    """Load metrics over the window (names in docs/metrics.md) and tags for what could not be counted.

    Marks each record that arrived in the window (`in_steady_window`)."""
    start, end, duration = window.start_s, window.end_s, window.duration_s
    arrived = [r for r in records if start <= r.arrival_s < end]
    for r in records:
        r.in_steady_window = start <= r.arrival_s < end
    steps = occupancy(records)
    metrics = {
        "load/steady_start_s": start,
        "load/steady_end_s": end,
        "load/steady_duration_s": duration,
        "load/steady_plateau_in_flight": float(window.plateau),
        "load/steady_requests": float(len(arrived)),
        "load/achieved_requests_per_s": len(arrived) / duration,
        "load/completed_requests_per_s": sum(start <= r.finished_s < end for r in records) / duration,
        "load/mean_concurrency": weighted_mean(steps, start, end, column=1),
        "load/mean_waiting": weighted_mean(steps, start, end, column=2),
    }
    tags: dict[str, str] = {}
    overlapping_resets = [r for r in records if r.reset and r.arrival_s < end and r.finished_s >= start]
    if overlapping_resets:
        tags["llem.online.steady_tokens"] = (
            f"unavailable: {len(overlapping_resets)} request(s) in the window were reset (their cache dropped and "
            "prefilled again), which loses the times of their tokens before the reset"
        )
    else:
        tokens = sum(start <= t < end for r in records for t in r.token_s)
        metrics["tokens/steady_output_total"] = float(tokens)
        metrics["throughput/steady_output_tokens_per_s"] = tokens / duration
    if slo is not None:
        judged = [meets_slo(r, slo) for r in arrived]
        if None in judged:
            tags["llem.online.goodput"] = (
                f"unavailable: {judged.count(None)} request(s) in the window were reset, so their latency "
                "against the SLO is unknown"
            )
        else:
            good = sum(judged)
            metrics["load/goodput_requests_per_s"] = good / duration
            metrics["load/slo_attainment_pct"] = 100.0 * good / len(arrived)
    return metrics, tags


def meets_slo(record, slo) -> bool | None:
    """True when the request met every bound given; None when a needed latency was not measured."""
    checks = []
    if slo.ttft_ms is not None:
        checks.append(None if record.ttft_ms is None else record.ttft_ms <= slo.ttft_ms)
    if slo.tpot_ms is not None:
        if record.tpot_ms is not None:
            checks.append(record.tpot_ms <= slo.tpot_ms)
        else:  # one token has no time per output token to miss; a reset request's is unknown
            checks.append(None if record.reset else True)
    return None if None in checks else all(checks)


def occupancy_histories(records: Sequence, start_epoch_ms: float) -> dict[str, list[tuple[int, float]]]:
    """timeline/requests_in_flight and timeline/requests_waiting: one point per change, wall-clock ms."""
    in_flight: list[tuple[int, float]] = []
    waiting: list[tuple[int, float]] = []
    for t, flying, queued in occupancy(records):
        stamp = int(round(start_epoch_ms + t * 1000.0))
        in_flight.append((stamp, float(flying)))
        waiting.append((stamp, float(queued)))
    return {"timeline/requests_in_flight": in_flight, "timeline/requests_waiting": waiting}


# --- step functions -------------------------------------------------------------------
def _segments(steps: list[tuple[float, int, int]], a: float, b: float, column: int) -> list[tuple[float, float]]:
    """(value, seconds) of the step function over [a, b]; before the first step it is 0."""
    out = []
    value, since = 0, a
    for step in steps:
        t = step[0]
        if t > since:
            if t >= b:
                break
            out.append((value, t - since))
            since = t
        value = step[column]
    if b > since:
        out.append((value, b - since))
    return out


def weighted_mean(steps: list[tuple[float, int, int]], a: float, b: float, column: int) -> float:
    segments = _segments(steps, a, b, column)
    total = math.fsum(d for _, d in segments)
    return math.fsum(v * d for v, d in segments) / total if total > 0 else float(segments[-1][0] if segments else 0)


def weighted_median(steps: list[tuple[float, int, int]], a: float, b: float, column: int) -> float:
    """The level the step function is at or below for at least half of [a, b]."""
    segments = sorted(_segments(steps, a, b, column))
    total = math.fsum(d for _, d in segments)
    if not segments or total <= 0:
        return 0.0
    running = 0.0
    for value, seconds in segments:
        running += seconds
        if running >= total / 2:
            return float(value)
    return float(segments[-1][0])
