"""Peak memory per phase (bench/memory.py): each phase's own peak, both ways of finding it."""

from __future__ import annotations

import sys
import time

import pytest

from llem_mlflow.bench.memory import HighWaterMark, PhaseMemory

BIG_MB = 300


def touch(mb: int) -> bytearray:
    """`mb` MiB of resident memory (every page written)."""
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


def peaks_of_a_big_then_a_small_phase(memory: PhaseMemory, hold_s: float) -> tuple[float, float, float]:
    memory.begin()
    before = memory.rss.peak_mb()
    block = touch(BIG_MB)
    time.sleep(hold_s)  # long enough for a sampler to see it
    del block
    big = memory.end()["peak_rss_mb"]
    memory.begin()
    touch(1)
    small = memory.end()["peak_rss_mb"]
    return before, big, small


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's high-water mark is Linux's")
def test_kernel_high_water_mark_gives_each_phase_its_own_peak():
    memory = PhaseMemory()
    try:
        assert isinstance(memory.rss, HighWaterMark) and "VmHWM" in memory.method
        before, big, small = peaks_of_a_big_then_a_small_phase(memory, hold_s=0)  # exact: even a brief peak counts
        assert big >= before + BIG_MB * 0.95
        assert small < big - BIG_MB * 0.9  # the first phase's peak is not carried into the next (ru_maxrss would be)
        assert memory.process_peak_mb() >= big  # the lifetime peak survives the resets
        assert memory.end().keys() == {"peak_rss_mb"}  # no GPU: no GPU figures at all
    finally:
        memory.close()


def test_sampled_rss_gives_each_phase_its_own_peak():
    memory = PhaseMemory(sampled=True)
    try:
        assert "sampled every 50 ms" in memory.method
        before, big, small = peaks_of_a_big_then_a_small_phase(memory, hold_s=0.5)
        assert big >= before + BIG_MB * 0.95
        assert small < big - BIG_MB * 0.9
        assert memory.process_peak_mb() >= big
    finally:
        memory.close()
    assert not memory.rss._thread.is_alive()  # closing stops the sampler
