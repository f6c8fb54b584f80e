"""What one experiment measured: the core's output, the reporter's input. No MLflow, no torch.

`measure(cfg) -> Report` fills it phase by phase; a failure leaves it partial
(`status = "partial"`, `error` set) with everything that finished kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from llem_mlflow.bench.generation import RequestRecord
    from llem_mlflow.bench.online import OnlineRequestRecord
    from llem_mlflow.bench.prompts import Prompt
    from llem_mlflow.config.models import ExperimentConfig
    from llem_mlflow.energy.monitor import EnergyRecord


@dataclass
class Report:
    config: ExperimentConfig
    workdir: Path  # files the report refers to (CodeCarbon's CSV); removed by whoever made it
    status: str = "running"  # running | complete | partial
    error: str | None = None
    phase: str = "start"  # the phase running now, or the one a failure stopped in
    durations_s: dict[str, float] = field(default_factory=dict)  # phase -> seconds, phases that ended
    # every measured request of all trials (`.trial`); OnlineRequestRecord for scenario: online
    records: list[RequestRecord | OnlineRequestRecord] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)  # the prompt set, in measured order (the run's dataset)
    trial_metrics: list[dict[str, float]] = field(default_factory=list)  # one dict per finished trial
    metrics: dict[str, float] = field(default_factory=dict)  # the run's figures (headline = trial mean)
    tags: dict[str, str] = field(default_factory=dict)  # llem.* tags, in the order they became known
    resolved: dict[str, Any] = field(default_factory=dict)  # what the libraries actually used
    energy: EnergyRecord | None = None  # samples, phase windows, per-phase energy (for the artifacts)
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(epoch ms, value)]
    texts: dict[str, str] = field(default_factory=dict)  # artifact path -> its text (e.g. online/schedule.json)

    def phase_time_metrics(self) -> dict[str, float]:
        """`time/<phase>_s` for every phase that ended (trials after the first are in trial/*)."""
        return {f"time/{name}_s": value for name, value in self.durations_s.items() if "/" not in name}

    def results(self) -> dict[str, Any]:
        """results.json: everything numeric the run holds, and how complete it is."""
        return {
            "status": self.status,
            "error": self.error,
            "phase": self.phase,
            "metrics": self.metrics,
            "trials": self.trial_metrics,
            "durations_s": self.durations_s,
            "tags": self.tags,
            # measured requests that finished, over every trial (a complete run: n_trials x dataset.n)
            "requests_completed": len(self.records),
            "trials_completed": len(self.trial_metrics),
        }


class Listener(Protocol):
    """Who hears about a measurement while it runs (the MLflow reporter; nothing by default).

    Called only at phase edges, never inside a measured window."""

    def on_tags(self, tags: dict[str, str]) -> None: ...

    def on_phase_end(self, report: Report, phase: str) -> None: ...

    def before_window(self) -> None:
        """A measured window opens next: finish background work now so it does not run inside it."""
        ...


class NoListener:
    def on_tags(self, tags: dict[str, str]) -> None:
        pass

    def on_phase_end(self, report: Report, phase: str) -> None:
        pass

    def before_window(self) -> None:
        pass
