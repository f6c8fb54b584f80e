"""Issue 13: cold start as its own phase, the prefill/decode split, memory per phase; issue 11 item 8
(cool-down tags reach the run through the one tag path). The core in-process, no MLflow: random:tiny
on the CPU with forced lengths, and a fake GPU (tests/fakegpu) holding the model's weights for NVML's side.
"""

from __future__ import annotations

import pytest
from fake_nvml import FakeGpu, FakeNvml
from fakegpu import FakeHardware
from helpers import before_batch

from llem_mlflow.bench.generation import Generator
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.energy.readings import GpuReading, HostReading, PhaseEnergy
from llem_mlflow.energy.split import prefill_decode_split
from llem_mlflow.report import NoListener
from llem_mlflow.runner import Measurement

GIB = 1024**3
POWER_W = 100.0
N, OUT = 4, 16  # prompts and forced output tokens per request
PHASES = [
    "startup", "environment", "baseline", "load", "baseline_loaded", "first_generate", "warmup",
    "measure", "prefill", "measure/2", "prefill/2",
]  # fmt: skip


class RecordingListener(NoListener):
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def on_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)


def split_config() -> ExperimentConfig:
    return ExperimentConfig(
        model="random:tiny",
        max_input_tokens=32,
        max_output_tokens=OUT,
        n_trials=2,
        dataset={"n": N},
        decoder={"preset": "deterministic", "min_new_tokens": OUT},
        pytorch={"batch_size": 2},
        warmup={"n_batches": 1},
        baseline={"enabled": True, "duration_s": 0.3},
        energy={"codecarbon": False, "sample_interval_ms": 20},
        cooldown={"enabled": True, "timeout_s": 0.3},
        measure={"prefill_split": True, "min_duration_s": 0},  # one pass: the calls below are counted
    )


@pytest.fixture(scope="module")
def split_run():
    """One 2-trial run with the split on. generate() calls: 1 first_generate, 2 warmup, 3-4 measure,
    5-6 prefill, 7-8 measure/2, 9-10 prefill/2. The fake GPU's memory use rises in warmup (2 GiB) and
    measure (3 GiB); it is hot (90 C) from trial 1 on, so the cool-down times out; trial 2's prefill
    pass runs at 1000x the power, so its decode energy comes out negative."""
    gpu = FakeGpu(power_w=POWER_W, temperature_c=40.0)
    listener = RecordingListener()
    calls: list[tuple[str, int, int]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        hardware = FakeHardware(FakeNvml([gpu]))  # the model's weights on its cuda:0
        measurement = Measurement(split_config(), quiet=True, hardware=hardware, listener=listener)
        real_run_batch = Generator.run_batch

        def logged(self, batch):
            calls.append((measurement.report.phase, self.generate_kwargs["max_new_tokens"], batch.index))
            return real_run_batch(self, batch)

        mp.setattr(Generator, "run_batch", logged)
        before_batch(mp, 2, lambda: setattr(gpu, "memory_used_bytes", 2 * GIB))
        before_batch(mp, 3, lambda: (setattr(gpu, "memory_used_bytes", 3 * GIB), setattr(gpu, "temperature_c", 90.0)))
        before_batch(mp, 9, lambda: gpu.set_power(POWER_W * 1000))
        try:
            report = measurement.run()
        finally:
            measurement.cleanup()
    return report, calls, listener


def test_first_generate_is_its_own_phase_outside_warmup_and_measure(split_run):
    report, calls, _ = split_run
    assert list(report.durations_s) == PHASES
    assert calls == [
        ("first_generate", OUT, 0), ("warmup", OUT, 0),
        ("measure", OUT, 0), ("measure", OUT, 1), ("prefill", 1, 0), ("prefill", 1, 1),
        ("measure/2", OUT, 0), ("measure/2", OUT, 1), ("prefill/2", 1, 0), ("prefill/2", 1, 1),
    ]  # fmt: skip
    windows = [report.energy.phases[p] for p in PHASES[3:]]  # load .. prefill/2: one window each, in order
    assert all(a[1] <= b[0] for a, b in zip(windows, windows[1:]))
    m = report.metrics
    assert m["time/first_generate_s"] == report.durations_s["first_generate"] > 0
    assert m["energy/first_generate_j"] == pytest.approx(POWER_W * m["time/first_generate_s"], rel=0.1)
    assert 0 < m["latency/first_ttft_ms"] <= m["time/first_generate_s"] * 1000
    # the requests measured are those of the two trials only
    assert [r.trial for r in report.records] == [1] * N + [2] * N
    assert m["tokens/output_total"] == N * OUT and report.results()["requests_completed"] == 2 * N


def test_prefill_and_decode_energy_split_the_measured_window(split_run):
    report, _, listener = split_run
    t1, summary = report.trial_metrics[0], report.energy.phases_summary
    prefill_j, total_j = t1["energy/prefill_j"], t1["energy/total_j"]
    assert prefill_j == summary["prefill"]["total_j"] and total_j == summary["measure"]["total_j"]
    assert t1["energy/decode_j"] == pytest.approx(total_j - prefill_j)  # prefill + decode = the measured total
    assert prefill_j == pytest.approx(POWER_W * t1["time/prefill_s"], rel=0.1)  # the pass's own window
    assert 0 < prefill_j < 0.7 * total_j  # one token of 16: the pass is not a full generation
    assert t1["tokens/decode_total"] == N * (OUT - 1)  # output tokens minus one per request
    assert t1["energy/j_per_decode_token"] == pytest.approx(t1["energy/decode_j"] / (N * (OUT - 1)))
    assert t1["energy/j_per_input_token"] == pytest.approx(prefill_j / t1["tokens/input_total"])
    for stat in ("mean", "p50", "p90", "p95", "p99", "std", "cv"):
        assert t1[f"latency/prefill_ms_{stat}"] > 0
    assert t1["latency/prefill_ms_p99"] <= t1["time/prefill_s"] * 1000
    assert listener.tags["llem.energy.prefill_split"].startswith("decode = measured window - prefill-only pass")
    assert listener.tags["llem.energy.total_sources"] == "gpu"


def test_a_decode_energy_that_is_not_positive_is_absent_and_warned(split_run):
    report, _, listener = split_run
    t2 = report.trial_metrics[1]
    assert t2["energy/prefill_j"] > t2["energy/total_j"]  # the prefill pass ran at 1000x the power
    assert "energy/decode_j" not in t2 and "energy/j_per_decode_token" not in t2
    warning = listener.tags["llem.warning.decode_energy_not_positive"]
    assert warning.startswith("trial 2: measured") and "left out" in warning
    assert "trial 2: no decode energy" in listener.tags["llem.energy.prefill_split"]
    # the run's figure is a mean over trials: with one trial lacking it, it is absent, never a mix
    assert "energy/decode_j" not in report.metrics and "energy/prefill_j" in report.metrics


def test_memory_per_phase(split_run):
    report, _, listener = split_run
    m, t1 = report.metrics, report.trial_metrics[0]
    for phase in ("environment", "baseline", "load", "first_generate", "warmup", "measure", "prefill"):
        assert m[f"memory/{phase}_peak_rss_mb"] > 0, phase
    assert t1["memory/measure_peak_rss_mb"] > 0 and t1["memory/prefill_peak_rss_mb"] > 0
    assert m["memory/load_peak_rss_mb"] > m["memory/environment_peak_rss_mb"]  # the model and its libraries arrive
    assert m["memory/process_peak_rss_mb"] >= max(v for k, v in m.items() if k.endswith("_peak_rss_mb"))
    assert listener.tags["llem.memory.rss_method"] == report.tags["llem.memory.rss_method"]
    # NVML's used memory per phase, from the sampler: each phase sees its own (edge ticks included)
    used = {p: m[f"memory/{p}_gpu_peak_used_mb"] for p in ("baseline", "load", "first_generate", "warmup")}
    assert used == {"baseline": 1024.0, "load": 1024.0, "first_generate": 1024.0, "warmup": 2048.0}
    assert t1["memory/measure_gpu_peak_used_mb"] == 3072.0 and t1["memory/prefill_gpu_peak_used_mb"] == 3072.0
    assert not any("allocated" in k or "reserved" in k for k in m)  # the model is on the CPU: no torch GPU peaks


def test_cooldown_tags_go_through_the_one_tag_path(split_run):
    report, _, listener = split_run
    assert "did not cool to within 3.0 C" in listener.tags["llem.warning.cooldown_timeout"]
    assert report.metrics["time/cooldown_s"] == pytest.approx(0.3, abs=0.25)
    assert listener.tags == report.tags  # every tag the report holds was heard (what reaches the run)


def energy(gpu_j: float | None, host_j: float | None) -> PhaseEnergy:
    reading = PhaseEnergy(phase="x", start_ms=0, end_ms=1, duration_s=1.0)
    if gpu_j is not None:
        reading.gpu = GpuReading(energy_j={0: gpu_j}, method="nvml_counter", duration_s=1.0, peak_power_w=None, samples=2)
    if host_j is not None:
        reading.host = HostReading(cpu_j=host_j, ram_j=0.0, gpu_j=0.0, emissions_kg=None, duration_s=1.0)
    return reading


def test_split_needs_the_same_sources_in_both_windows():
    split = prefill_decode_split(energy(10.0, 5.0), energy(2.0, 1.0), input_tokens=30, decode_tokens=12)
    assert split.metrics == pytest.approx(
        {"energy/prefill_j": 3.0, "energy/j_per_input_token": 0.1, "energy/decode_j": 12.0, "energy/j_per_decode_token": 1.0}
    )
    assert split.note is None and split.not_positive is None
    lost_gpu = prefill_decode_split(energy(10.0, 5.0), energy(None, 1.0), 30, 12)
    assert lost_gpu.metrics == {} and "prefill window measured cpu+ram, the measured window gpu+cpu+ram" in lost_gpu.note
    assert prefill_decode_split(energy(None, None), energy(2.0, 1.0), 30, 12).metrics == {}
    one_token = prefill_decode_split(energy(10.0, 5.0), energy(2.0, 1.0), 30, decode_tokens=0)
    assert "energy/j_per_decode_token" not in one_token.metrics and "no decode tokens" in one_token.note
