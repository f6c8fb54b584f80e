"""Prefill and decode energy from two windows: a measured trial and its prefill-only pass.

The prefill-only pass runs the trial's batches again with one new token per
request, so it spends what the measured window spends before its decode steps
(the generate() call's setup, the prompt's forward pass, the first token).
Decode energy is the rest: measured - prefill. docs/methodology.md says why a
subtraction, and what its error is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llem_mlflow.energy.readings import PhaseEnergy


@dataclass
class Split:
    metrics: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # which figures are absent and why (None: all there)
    not_positive: str | None = None  # why decode energy is absent when measured - prefill <= 0


def prefill_decode_split(
    measured: PhaseEnergy | None, prefill: PhaseEnergy | None, input_tokens: int, decode_tokens: int
) -> Split:
    """energy/prefill_j, j_per_input_token, decode_j, j_per_decode_token (decode tokens: output tokens
    minus one per request, the first coming from the prefill). Both windows must have measured the same
    sources, or nothing is reported: a difference across sources would mean nothing."""
    if measured is None or measured.total_j is None:
        return Split(note="the measured window has no energy")
    if prefill is None or prefill.total_j is None:
        return Split(note="the prefill window has no energy")
    if prefill.total_sources != measured.total_sources:
        return Split(
            note=f"the prefill window measured {_sources(prefill)}, the measured window {_sources(measured)}: "
            "a difference across sources would mean nothing"
        )
    split = Split()
    m = split.metrics
    m["energy/prefill_j"] = prefill.total_j
    if input_tokens > 0:
        m["energy/j_per_input_token"] = prefill.total_j / input_tokens
    decode_j = measured.total_j - prefill.total_j
    if decode_j <= 0:  # never floored to 0, never logged as a negative energy: absent, with the figures
        split.not_positive = (
            f"measured {measured.total_j:.4g} J - prefill {prefill.total_j:.4g} J = {decode_j:.4g} J: decode energy is "
            "within the windows' error (or the prefill pass ran under other conditions); energy/decode_j and "
            "energy/j_per_decode_token are left out"
        )
        split.note = "no decode energy: not positive (see llem.warning.decode_energy_not_positive)"
        return split
    m["energy/decode_j"] = decode_j
    if decode_tokens <= 0:
        split.note = "no request produced a second token: no decode tokens, so no energy/j_per_decode_token"
    else:
        m["energy/j_per_decode_token"] = decode_j / decode_tokens
    return split


def _sources(reading: PhaseEnergy) -> str:
    return "+".join(reading.total_sources) or "nothing"
