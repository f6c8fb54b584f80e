"""Real CodeCarbon (estimate mode on this machine) and the monitor on this GPU-less machine with the real pynvml."""

import csv
import time

import pytest

from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.energy.codecarbon_source import (
    CodeCarbonSource,
    CodeCarbonUnavailable,
    country_problem,
)
from llem_mlflow.energy.monitor import EnergyMonitor
from llem_mlflow.errors import EnergyError

pytestmark = pytest.mark.filterwarnings("ignore")


def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(i * i for i in range(1000))


def test_codecarbon_figures_have_joule_units_and_positive_sign(tmp_path):
    source = CodeCarbonSource("USA", tmp_path)
    source.begin("measure")
    busy(0.5)
    reading = source.end()
    assert reading.duration_s == pytest.approx(0.5, abs=0.3)
    # kWh -> J: a CPU draws watts, so over half a second it is between 0.01 J and 500 J (1 kW)
    for joules in (reading.cpu_j, reading.ram_j):
        assert 0.01 < joules < 1000 * reading.duration_s
    assert reading.gpu_j == 0.0  # no GPU on this machine
    assert 0 < reading.emissions_kg < 1e-3
    # emissions follow energy: USA grid intensity is a few hundred g/kWh
    grams_per_kwh = reading.emissions_kg * 1000 / ((reading.cpu_j + reading.ram_j) / 3.6e6)
    assert 100 < grams_per_kwh < 1000
    assert source.cpu_method.startswith(("RAPL", "estimate"))
    # a counter is a measurement, a TDP model an estimate; RAM is always CodeCarbon's model
    assert reading.cpu_quality == ("measured" if source.cpu_method.startswith("RAPL") else "estimated")
    # the intensity CodeCarbon applied: its emissions over its energy (CPU + RAM + its GPU figure)
    assert reading.kg_per_kwh == pytest.approx(reading.emissions_kg / ((reading.cpu_j + reading.ram_j + reading.gpu_j) / 3.6e6), rel=1e-6)


def test_scope_is_codecarbons_tracking_mode(tmp_path):
    for scope in ("process", "machine"):
        source = CodeCarbonSource("USA", tmp_path / scope, scope=scope)
        source.begin("measure")
        time.sleep(0.1)
        source.end()
        assert [r["tracking_mode"] for r in csv.DictReader(source.csv_path.open())] == [scope]
    with pytest.raises(EnergyError, match="energy.codecarbon_scope 'everything'"):
        CodeCarbonSource("USA", tmp_path, scope="everything")


def test_each_window_is_a_row_of_one_csv(tmp_path):
    source = CodeCarbonSource("FRA", tmp_path)
    for phase in ("load", "measure"):
        source.begin(phase)
        time.sleep(0.1)
        source.end()
    rows = list(csv.DictReader(source.csv_path.open()))
    assert [r["project_name"] for r in rows] == ["llem/load", "llem/measure"]
    assert {r["country_iso_code"] for r in rows} == {"FRA"}


def test_unknown_country_makes_emissions_unavailable_not_zero(tmp_path):
    source = CodeCarbonSource("XYZ", tmp_path)
    source.begin("measure")
    time.sleep(0.1)
    reading = source.end()
    assert reading.emissions_kg is None
    assert "XYZ" in reading.emissions_reason
    assert country_problem("XYZ") and country_problem("DEU") is None


def test_a_tracker_that_never_started_is_unavailable_with_the_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    source = CodeCarbonSource("USA", blocker / "sub")  # output dir cannot be created
    source.begin("measure")
    with pytest.raises(CodeCarbonUnavailable, match="NotADirectoryError"):
        source.end()


def test_codecarbon_returning_none_is_unavailable(tmp_path, monkeypatch):
    """CodeCarbon swallows its exceptions: stop() then returns None."""
    source = CodeCarbonSource("USA", tmp_path)
    source.begin("measure")
    tracker = source._tracker
    real_stop = tracker.stop
    monkeypatch.setattr(tracker, "stop", lambda: (real_stop(), None)[1])
    with pytest.raises(CodeCarbonUnavailable, match="no emissions"):
        source.end()


def test_cpu_only_monitor_gpu_absent_cpu_ram_emissions_present(tmp_path):
    """This machine has no GPU: the real pynvml fails, CodeCarbon measures."""
    cfg = ExperimentConfig(model="random:tiny", energy={"codecarbon": True})
    monitor = EnergyMonitor(cfg)  # real pynvml
    try:
        monitor.measure_baseline()
        monitor.begin("measure")
        busy(0.3)
        measured = monitor.end("measure")
    finally:
        monitor.close()
    m = monitor.metrics(measured, output_tokens=50, requests=2)
    assert not any(k.startswith(("energy/gpu", "power/")) for k in m)
    assert m["energy/cpu_j"] > 0 and m["energy/ram_j"] > 0 and m["emissions/kg_co2eq"] > 0
    assert m["energy/total_j"] == pytest.approx(m["energy/cpu_j"] + m["energy/ram_j"])
    assert m["energy/j_per_output_token"] == pytest.approx(m["energy/total_j"] / 50)
    tags = monitor.tags()
    assert tags["llem.energy.gpu_method"].startswith("unavailable: ")
    assert tags["llem.energy.baseline"].startswith("skipped: no GPU")
    assert tags["llem.energy.total_sources"] == "cpu+ram"
    assert tags["llem.energy.cpu_method"].startswith("CodeCarbon ")
    paths = monitor.write_artifacts(tmp_path)
    assert {p.name for p in paths} == {"codecarbon_emissions.csv", "energy_phases.json"}  # no GPU: no timeline


def test_unknown_country_in_config_is_refused_naming_the_field():
    from llem_mlflow.config.loader import validate_config
    from llem_mlflow.errors import ConfigError

    with pytest.raises(ConfigError, match="energy.country_iso_code: 'XYZ' is not a country in CodeCarbon's"):
        validate_config({"model": "random:tiny", "energy": {"country_iso_code": "XYZ"}}, "exp.yaml")
    with pytest.raises(ConfigError, match=r"did you mean SRB \(Serbia\), FRO \(Faroe Islands\) or FRA \(France\)\? Use"):
        validate_config({"model": "random:tiny", "energy": {"country_iso_code": "FRB"}}, "exp.yaml")
    # Without CodeCarbon the country is unused: not checked.
    assert ExperimentConfig(model="random:tiny", energy={"codecarbon": False, "country_iso_code": "XYZ"})
    # The monitor refuses it too (a config made without validation).
    cfg = ExperimentConfig.model_construct(**{**ExperimentConfig(model="random:tiny").__dict__})
    cfg.energy = cfg.energy.model_construct(**{**cfg.energy.__dict__, "country_iso_code": "XYZ", "gpu": "off"})
    with pytest.raises(EnergyError, match="energy.country_iso_code 'XYZ'"):
        EnergyMonitor(cfg)


def test_shipped_country_table_is_codecarbons():
    """The table `validate` checks against (no CodeCarbon import) is CodeCarbon's own energy-mix table."""
    from codecarbon.input import DataSource

    from llem_mlflow.energy.countries import carbon_countries

    mix = DataSource().get_global_energy_mix_data()
    assert carbon_countries() == {code: row["country_name"] for code, row in mix.items()}, (
        "CodeCarbon's table changed: python llem_mlflow/energy/data/make_countries.py > llem_mlflow/energy/data/carbon_countries.tsv"
    )


def test_a_window_too_short_to_count_cpu_time_has_no_cpu_figure_not_a_zero(tmp_path):
    """Process scope: CPU time comes in 10 ms kernel ticks. A window shorter than 10 ticks that counted
    none has no CPU figure, with the reason (RAM and the intensity stay); one that counted some keeps it."""
    source = CodeCarbonSource("USA", tmp_path)
    outcomes = []
    for _ in range(20):  # windows of a few ms: about half hold no tick (all 20 holding one: ~1e-6)
        source.begin("first_generate")
        reading = source.end()
        assert reading.ram_j > 0 and reading.kg_per_kwh
        if reading.cpu_j is None:
            assert "10 ms ticks" in reading.cpu_reason and "rather than a made-up 0" in reading.cpu_reason
        else:
            assert reading.cpu_j > 0 and reading.cpu_reason is None  # never a 0 from a window this short
        outcomes.append(reading.cpu_j)
    assert None in outcomes
    source.begin("measure")
    time.sleep(0.3)  # idle for 30 ticks: a 0 (or a tick of housekeeping) is a real near-idle figure
    assert source.end().cpu_j >= 0


def test_a_phase_without_the_cpu_figure_has_no_phase_total(tmp_path):
    """first_generate's CPU unresolved: its energy/first_generate_j would miss the CPU, so it is absent."""
    cfg = ExperimentConfig(model="random:tiny", energy={"gpu": "off", "codecarbon": True, "rapl": False})
    monitor = EnergyMonitor(cfg, workdir=tmp_path)
    try:
        for _ in range(20):  # until a ~1 ms window holds no tick (almost always the first)
            monitor.begin("first_generate")
            first = monitor.end("first_generate")
            if "cpu" not in first.sources:
                break
        monitor.begin("measure")
        busy(0.3)
        measured = monitor.end("measure")
    finally:
        monitor.close()
    assert set(first.sources) == {"ram"} and set(measured.sources) == {"cpu", "ram"}
    m = monitor.metrics(measured, output_tokens=10, requests=1)
    assert "energy/first_generate_j" not in m and m["energy/cpu_j"] > 0
    assert "10 ms ticks" in monitor.record().phases_summary["first_generate"]["codecarbon_cpu_reason"]


def test_a_window_shorter_than_codecarbons_50_ms_still_gets_its_reading(tmp_path):
    """CodeCarbon 3's stop() skips its last reading when the one before is under 50 ms old: a 30 ms
    window read a twentieth of its RAM energy and no CPU. Each window now ends with a reading at its edge."""
    cfg = ExperimentConfig(model="random:tiny", energy={"gpu": "off", "codecarbon": True, "rapl": False})
    monitor = EnergyMonitor(cfg, workdir=tmp_path)
    try:
        monitor.begin("load")
        busy(0.3)
        long = monitor.end("load")
        monitor.begin("first_generate")
        busy(0.04)
        short = monitor.end("first_generate")
    finally:
        monitor.close()

    def ram_w(reading):
        return reading.host.ram_j / reading.host.duration_s

    assert ram_w(short) == pytest.approx(ram_w(long), rel=0.5)  # the same memory, the same power model
    assert short.host.cpu_j is not None and short.host.cpu_j > 0  # 40 ms of busy CPU: about four ticks
