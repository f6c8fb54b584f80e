"""CPU contention: other processes' CPU time against ours over a measured window (real /proc, real processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import before_batch, only_run, write_config

from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.energy import contention
from llem_mlflow.energy.contention import MAX_OTHERS_CPU_PCT, CpuSnapshot, cpu_contention, cpu_load
from llem_mlflow.energy.monitor import EnergyMonitor
from llem_mlflow.launch import launch


def test_shares_are_of_the_machines_capacity():
    before = CpuSnapshot(monotonic_s=100.0, busy_s=1000.0, own_s=50.0, n_cpus=4)
    after = CpuSnapshot(monotonic_s=102.0, busy_s=1004.0, own_s=52.0, n_cpus=4)  # 2 s x 4 CPUs = 8 CPU-s; 4 busy, 2 ours
    load = cpu_load(before, after)
    assert load.own_pct == pytest.approx(25.0) and load.others_pct == pytest.approx(25.0)
    text = cpu_contention(load)
    assert "other processes used 25%" in text and "this run 25%" in text and "on 4 CPUs" in text
    quiet = cpu_load(before, CpuSnapshot(102.0, 1002.4, 52.0, 4))  # others 0.4 CPU-s: 5%
    assert quiet.others_pct == pytest.approx(5.0) and cpu_contention(quiet) is None
    assert cpu_contention(quiet, max_others_pct=4.0)  # the threshold is a parameter
    assert cpu_load(before, before) is None  # no time passed: nothing to tell


def test_a_snapshot_sees_this_process_work():
    before = contention.snapshot()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        sum(i * i for i in range(1000))
    load = cpu_load(before, contention.snapshot())
    assert load.own_pct > 0 and 0 <= load.others_pct <= 100
    assert load.own_pct * load.n_cpus * load.duration_s / 100 > 0.02  # at least some CPU seconds were ours


def busy_processes(seconds: float) -> list[int]:
    """One busy-looping process per CPU, each ending by itself after `seconds` (bounded); their pids.

    Started through a launcher that exits at once, so they are not this process's children: the
    run counts its own children's CPU time as its own (the reporter, data-parallel ranks), and these
    must count as someone else's, as the processes of another user would."""
    import os

    loop = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    launcher = (
        "import subprocess, sys\n"
        f"hogs = [subprocess.Popen([sys.executable, '-c', {loop!r}], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
        f" for _ in range({os.cpu_count() or 1})]\n"
        "print(' '.join(str(h.pid) for h in hogs))\n"
    )
    started = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, check=True, timeout=60)
    return [int(pid) for pid in started.stdout.split()]


def test_a_run_beside_busy_processes_carries_the_warning(mlflow_store, tmp_path, capsys, monkeypatch):
    # The busy processes start just before the first generate() (so the shared machine is hogged for
    # seconds, not for the whole run) and end by themselves after 60 s at most.
    hogs: list[int] = []
    before_batch(monkeypatch, 1, lambda: hogs.extend(busy_processes(60)))
    cfg = write_config(tmp_path / "exp.yaml", measure={"min_duration_s": 2.0})
    try:
        assert launch(str(cfg), quiet=False) == 0
    finally:
        for pid in hogs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert hogs
    out = capsys.readouterr().out
    run = only_run()
    assert run.data.metrics["cpu/others_util_pct"] > MAX_OTHERS_CPU_PCT
    warning = run.data.tags["llem.warning.cpu_contention"]
    assert "other processes used" in warning and "load average" in warning
    assert "warning: cpu_contention: other processes used" in out  # the CLI summary repeats it


def test_a_quiet_window_has_no_warning():
    """Needs a quiet machine, which a shared CI runner often is not: measured first, skipped when busy."""
    before = contention.snapshot()
    time.sleep(1.0)
    background = cpu_load(before, contention.snapshot())
    if background.others_pct > MAX_OTHERS_CPU_PCT / 2:
        pytest.skip(f"this machine is busy ({background.others_pct:.0f}% of its CPU used by others): cannot be quiet")
    cfg = ExperimentConfig(model="random:tiny", energy={"gpu": "off", "codecarbon": False, "rapl": False})
    monitor = EnergyMonitor(cfg)
    monitor.begin("measure")
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        sum(i * i for i in range(1000))
    measured = monitor.end("measure")
    monitor.close()
    assert measured.cpu_load.others_pct <= MAX_OTHERS_CPU_PCT
    assert "llem.warning.cpu_contention" not in monitor.tags()
