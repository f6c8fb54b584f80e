"""RAPL read directly from powercap: a fake sysfs tree in a temporary folder, through the real reader and monitor."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from fake_rapl import MAX_UJ, FakeRapl

from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.energy.monitor import EnergyMonitor
from llem_mlflow.energy.rapl import RaplSource, RaplUnavailable, find_domains, wrapped_delta_uj


def test_finds_package_and_dram_per_socket_and_nothing_that_would_count_twice(tmp_path):
    FakeRapl(tmp_path, sockets=2, dram=True, psys=True)
    domains = find_domains(tmp_path)
    assert [(d.label, d.kind, d.socket) for d in domains] == [
        ("package-0", "package", 0), ("dram-0", "dram", 0), ("package-1", "package", 1), ("dram-1", "dram", 1),
    ]  # fmt: skip
    assert all(d.max_energy_uj == MAX_UJ for d in domains)  # core, psys and mmio zones left out


def test_a_window_counts_the_joules_of_each_socket(tmp_path):
    rapl = FakeRapl(tmp_path, sockets=2)
    source = RaplSource.open(tmp_path)
    source.begin()
    rapl.add_everywhere(3.5)
    rapl.add_joules("intel-rapl:1", 1.0)  # socket 1 worked harder
    reading = source.end()
    assert reading.package_j == {0: pytest.approx(3.5), 1: pytest.approx(4.5)}
    assert reading.dram_j == {0: pytest.approx(3.5), 1: pytest.approx(3.5)}
    assert reading.cpu_j == pytest.approx(8.0) and reading.ram_j == pytest.approx(7.0)


def test_a_counter_that_wraps_inside_the_window(tmp_path):
    rapl = FakeRapl(tmp_path, dram=False, start_uj=MAX_UJ - 2_000_000)  # 2 J before the wrap
    source = RaplSource.open(tmp_path)
    source.begin()
    rapl.add_joules("intel-rapl:0", 5.0)  # passes the maximum: the file now reads 3 J
    assert rapl.read("intel-rapl:0") == 3_000_000
    reading = source.end()
    assert reading.cpu_j == pytest.approx(5.0)
    assert reading.ram_j is None  # no dram domain: absent, not 0


def test_polls_catch_more_than_one_wrap_in_a_long_window(tmp_path):
    rapl = FakeRapl(tmp_path, dram=False, start_uj=0)
    source = RaplSource.open(tmp_path)
    source.begin()
    for _ in range(3):  # three times 0.6 of the range: two wraps, each seen by a poll
        rapl.add_joules("intel-rapl:0", 0.6 * MAX_UJ / 1e6)
        source.poll()
    assert source.end().cpu_j == pytest.approx(1.8 * MAX_UJ / 1e6)


def test_wrapped_delta():
    assert wrapped_delta_uj(10, 25, 100) == 15
    assert wrapped_delta_uj(90, 5, 100) == 15


def test_absent_or_broken_trees_say_why(tmp_path):
    with pytest.raises(RaplUnavailable, match="is absent"):
        find_domains(tmp_path / "nothing")
    with pytest.raises(RaplUnavailable, match="no intel-rapl zone"):
        find_domains(tmp_path)
    rapl = FakeRapl(tmp_path / "bad")
    rapl.set("intel-rapl:0", "n/a")  # type: ignore[arg-type]
    with pytest.raises(RaplUnavailable, match="not a whole number"):
        find_domains(tmp_path / "bad")


def test_unreadable_counters_say_permission(tmp_path):
    """energy_uj readable by root only, as Linux 5.10+ ships it; read by an unprivileged user."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="llem-rapl-"))  # not under pytest's root-only tmp folder
    try:
        rapl = FakeRapl(root / "powercap")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (rapl.zones["intel-rapl:0"] / "energy_uj").chmod(0o600)
        message = _as_unprivileged_user(lambda: find_domains(root / "powercap"))
    finally:
        shutil.rmtree(root)
    assert "permission denied" in message and "root-only" in message and "energy_uj" in message


def _as_unprivileged_user(action) -> str:
    """The RaplUnavailable message of action() run as nobody (a forked child drops root), or 'readable'."""
    if os.geteuid() != 0:
        try:
            action()
            return "readable"
        except RaplUnavailable as exc:
            return str(exc)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report through the pipe, exit at once
        message = "child failed"
        try:
            os.setgid(65534)
            os.setuid(65534)
            action()
            message = "readable"
        except RaplUnavailable as exc:
            message = str(exc)
        finally:
            os.write(write_end, message.encode())
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read().decode()


def test_this_machine(capsys):
    """What /sys/class/powercap holds here (printed for the record): readable domains, or the reason."""
    try:
        print("RAPL here:", ", ".join(d.label for d in find_domains()))
    except RaplUnavailable as exc:
        print("RAPL here: unavailable:", exc)
        assert str(exc)


# --- in the monitor: RAPL replaces CodeCarbon's CPU and RAM figures --------------------------------


def monitor_for(tmp_path, rapl_root, codecarbon=True):
    cfg = ExperimentConfig(model="random:tiny", energy={"gpu": "off", "codecarbon": codecarbon})
    return EnergyMonitor(cfg, workdir=tmp_path / "work", rapl_root=rapl_root)


def measure_once(tmp_path, during):
    """One measured window over the fake powercap tree with `during()` inside it: (monitor, reading)."""
    monitor = monitor_for(tmp_path, tmp_path / "powercap")
    try:
        monitor.begin("measure")
        during()
        measured = monitor.end("measure")
    finally:
        monitor.close()
    return monitor, measured


def test_readable_rapl_is_the_measured_cpu_and_ram_source(tmp_path):
    rapl = FakeRapl(tmp_path / "powercap")
    monitor, measured = measure_once(tmp_path, lambda: rapl.add_everywhere(2.0))
    m, tags = monitor.metrics(measured, output_tokens=10, requests=1), monitor.tags()
    assert m["energy/cpu_j"] == pytest.approx(2.0) and m["energy/ram_j"] == pytest.approx(2.0)
    assert m["energy/total_j"] == m["energy/measured_j"] == pytest.approx(4.0)
    assert m["energy/measured_j_per_output_token"] == pytest.approx(0.4)
    assert tags["llem.energy.cpu_method"] == "rapl (package-0)" and tags["llem.energy.ram_method"] == "rapl (dram-0)"
    assert tags["llem.energy.cpu_quality"] == tags["llem.energy.ram_quality"] == "measured"
    assert tags["llem.energy.total_quality"] == "measured"
    assert tags["llem.energy.rapl"] == "readable: package-0, dram-0"
    # CodeCarbon still ran (the grid intensity, and its own figure as a cross-check), but is not added
    assert measured.host is not None and measured.host.cpu_j != pytest.approx(2.0)
    assert m["emissions/kg_co2eq"] == pytest.approx(4.0 / 3.6e6 * m["emissions/grid_intensity_g_per_kwh"] / 1000)


def test_without_a_dram_domain_ram_stays_codecarbons_estimate(tmp_path):
    rapl = FakeRapl(tmp_path / "powercap", dram=False)
    monitor, measured = measure_once(tmp_path, lambda: rapl.add_everywhere(1.0))
    m, tags = monitor.metrics(measured, output_tokens=10, requests=1), monitor.tags()
    assert m["energy/cpu_j"] == pytest.approx(1.0) and m["energy/ram_j"] == pytest.approx(measured.host.ram_j)
    assert m["energy/measured_j"] == pytest.approx(1.0) and m["energy/measured_j"] < m["energy/total_j"]
    assert tags["llem.energy.total_quality"] == "mixed: cpu measured, ram estimated"
    assert tags["llem.energy.ram_method"].startswith("CodeCarbon estimate") and "no dram domain" in tags["llem.energy.ram_method"]


def test_rapl_failing_mid_run_leaves_the_window_to_codecarbon_with_the_reason(tmp_path):
    rapl = FakeRapl(tmp_path / "powercap")

    def counter_breaks() -> None:
        rapl.set("intel-rapl:0", "gone")  # type: ignore[arg-type]
        time.sleep(0.2)  # a window over 10 ticks: CodeCarbon's process estimate stands, even at 0 J

    monitor, measured = measure_once(tmp_path, counter_breaks)
    assert measured.rapl is None and "not a whole number" in measured.rapl_reason
    assert measured.sources["cpu"].meter == "codecarbon"
    assert monitor.tags()["llem.energy.cpu_quality"] == measured.host.cpu_quality


def test_rapl_off_in_the_config_is_never_read(tmp_path):
    FakeRapl(tmp_path / "powercap")
    cfg = ExperimentConfig(model="random:tiny", energy={"gpu": "off", "codecarbon": False, "rapl": False})
    monitor = EnergyMonitor(cfg, rapl_root=tmp_path / "powercap")
    monitor.begin("measure")
    measured = monitor.end("measure")
    monitor.close()
    assert measured.sources == {} and measured.rapl is None
    assert not any(k.startswith(("energy/", "emissions/")) for k in monitor.metrics(measured, 10, 1))
    assert monitor.tags()["llem.energy.rapl"] == "unavailable: off: energy.rapl is false"
    assert monitor.tags()["llem.energy.total_quality"] == "unavailable: no energy source was measured"
