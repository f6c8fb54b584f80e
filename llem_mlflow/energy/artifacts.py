"""The energy artifacts of a run, written from an EnergyRecord: the timeline table, CodeCarbon's
CSV, per-phase energy and the power plot. pandas and matplotlib are imported here only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from llem_mlflow.energy.timeline import plot_power, write_table

if TYPE_CHECKING:
    from llem_mlflow.energy.monitor import EnergyRecord


def write_energy_artifacts(record: EnergyRecord, directory: Path) -> list[Path]:
    """timeline.parquet, codecarbon_emissions.csv, energy_phases.json and plots/power_timeline.png."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if record.samples:
        written.append(write_table(record.samples, directory))
        written.append(plot_power(record.samples, record.phases, record.baseline_w, directory / "plots" / "power_timeline.png"))
    if record.codecarbon_csv is not None:
        written.append(Path(shutil.copy(record.codecarbon_csv, directory / "codecarbon_emissions.csv")))
    phases_path = directory / "energy_phases.json"
    phases_path.write_text(json.dumps(record.phases_summary, indent=2))
    written.append(phases_path)
    return written
