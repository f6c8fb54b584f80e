"""The real NVML path on a real GPU (skipped without CUDA). Run by benchmarks/gpu_check.sh."""

import time

import pytest

torch = pytest.importorskip("torch")

from llem_mlflow.config.models import ExperimentConfig  # noqa: E402
from llem_mlflow.energy.monitor import EnergyMonitor  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and NVML"),
]


def gpu_config(**energy):
    return ExperimentConfig(
        model="random:gpt2",
        precision="bf16",
        max_input_tokens=64,
        max_output_tokens=64,
        decoder={"preset": "deterministic", "min_new_tokens": 64},
        dataset={"source": "builtin", "n": 16},
        pytorch={"batch_size": 8},
        baseline={"enabled": True, "duration_s": 2.0},
        energy={"gpu": "nvml", "codecarbon": False, "sample_interval_ms": 50, **energy},
    )


def busy_gpu(seconds):
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def test_counter_and_integrated_sampled_power_agree_within_10_percent():
    monitor = EnergyMonitor(gpu_config())
    try:
        busy_gpu(1.0)  # wake the GPU up before the window
        monitor.begin("measure")
        busy_gpu(6.0)
        measured = monitor.end("measure")
        sampled_j = monitor.sampled_energy_j("measure")
    finally:
        monitor.close()
    assert measured.gpu.method == "nvml_counter"
    assert measured.duration_s >= 5.0
    ratio = measured.gpu.total_j / sampled_j
    print(f"counter {measured.gpu.total_j:.1f} J, sampled {sampled_j:.1f} J, ratio {ratio:.3f}")
    assert 0.9 <= ratio <= 1.1
    # busy H100-class GPU: tens to hundreds of watts, never above its power limit by much
    limit_w = float(monitor.tags()["llem.gpu.power_limit_w"].split(",")[0])
    assert 30 < measured.gpu.mean_power_w < limit_w * 1.1


def test_j_per_output_token_is_positive_and_plausible():
    """The real core, measure(), end to end on the GPU (no MLflow needed)."""
    from llem_mlflow.runner import Measurement

    measurement = Measurement(gpu_config(), quiet=True)
    try:
        report = measurement.run()
    finally:
        measurement.cleanup()
    m, tags = report.metrics, report.tags
    print({k: round(v, 4) for k, v in m.items() if not k.startswith("timeline/")})
    # whole passes over the 16 prompts until the window lasts the NVML default of 5 s (measure.min_duration_s unset)
    assert m["tokens/output_total"] == 16 * 64 * m["measure/passes"]
    assert m["time/measure_s"] >= 5.0 and "llem.warning.short_window" not in tags
    assert tags["llem.energy.gpu_quality"] == "measured" and tags["llem.energy.total_quality"] == "measured"
    assert m["energy/gpu_j_per_output_token"] == pytest.approx(m["energy/gpu_j"] / m["tokens/output_total"])
    assert m["energy/measured_j_per_output_token"] == pytest.approx(m["energy/j_per_output_token"])
    # a 124M-parameter model on a datacenter GPU: well above 0, far below 10 J per token
    assert 0 < m["energy/j_per_output_token"] < 10
    assert 0 <= m["energy/dynamic_j_per_output_token"] <= m["energy/j_per_output_token"]
    assert m["power/gpu_baseline_w"] > 0
    assert tags["llem.energy.gpu_method"] == "nvml_counter"
    assert "NVIDIA" in tags["llem.gpu.name"]
    assert tags["llem.device.type"] == "cuda"
    # memory per phase (issue 13): torch's peaks reset at each phase, NVML's used memory from the sampler
    for phase in ("load", "first_generate", "warmup", "measure"):
        allocated, reserved = m[f"memory/{phase}_gpu_peak_allocated_mb"], m[f"memory/{phase}_gpu_peak_reserved_mb"]
        assert 0 < allocated <= reserved, phase
        if phase != "load":  # generate() never empties torch's cache: the board holds the reserved pool at the end tick
            assert reserved <= m[f"memory/{phase}_gpu_peak_used_mb"], phase
    assert m["memory/load_gpu_peak_allocated_mb"] >= 0.9 * m["memory/gpu_model_mb"]  # the weights arrive in the load
    assert m["memory/gpu_peak_allocated_mb"] == m["memory/measure_gpu_peak_allocated_mb"]  # one trial
    assert m["time/first_generate_s"] > 0 and m["energy/first_generate_j"] > 0 and m["latency/first_ttft_ms"] > 0


def test_prefill_decode_split_agrees_with_the_counter_read_at_step_edges(monkeypatch):
    """Issue 13: decode energy by subtraction (measured window - prefill-only pass) against a split of the
    measured window on its own timeline: the NVML counter read when each batch's first token reaches the
    streamer (transformers copies it to the host first, so the GPU has finished that step) and at its last
    token. GPU energy only (CodeCarbon off): the subtraction's GPU part is what the timeline can check."""
    import pynvml

    from llem_mlflow.bench import generation
    from llem_mlflow.runner import Measurement

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(0).uuid}")
    reads: list[tuple[float, int, float]] = []  # (monotonic s, put number within its generate() call, counter J)
    plain_streamer = generation._streamer_class

    def counting_streamer():
        class CountingStreamer(plain_streamer()):
            def put(self, value):
                super().put(value)
                reads.append((time.monotonic(), len(self.times), pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0))

        return CountingStreamer

    monkeypatch.setattr(generation, "_streamer_class", counting_streamer)
    cfg = ExperimentConfig(
        model="random:llama-3.2-1b",
        precision="bf16",
        max_input_tokens=1024,
        max_output_tokens=32,
        decoder={"preset": "deterministic", "min_new_tokens": 32},
        dataset={"source": "synthetic", "synthetic_input_tokens": 1024, "n": 128},
        pytorch={"batch_size": 16},
        baseline={"enabled": False},
        energy={"gpu": "nvml", "codecarbon": False, "sample_interval_ms": 50},
        measure={"prefill_split": True, "min_duration_s": 0},  # one pass: the calls below are counted
    )
    measurement = Measurement(cfg, quiet=True)
    try:
        report = measurement.run()
    finally:
        measurement.cleanup()
    start_s, end_s = report.energy.windows_s["measure"]
    calls, current = [], []  # the counter at each put, per generate() call of the measured window
    for t, put, joules in reads:
        if put == 1 and current:
            calls.append(current)
            current = []
        if start_s <= t <= end_s:
            current.append(joules)
    calls.append(current)
    calls = [c for c in calls if c]
    assert len(calls) == 128 // 16 and all(len(c) == 1 + 32 for c in calls)  # the prompt, then 32 tokens
    timeline_decode_j = sum(c[-1] - c[1] for c in calls)  # first token's edge -> last token's edge
    summary = report.energy.phases_summary
    measured_j, prefill_j = sum(summary["measure"]["gpu_j"].values()), sum(summary["prefill"]["gpu_j"].values())
    timeline_prefill_j = measured_j - timeline_decode_j
    print(
        f"measured {measured_j:.1f} J; subtraction: prefill {prefill_j:.1f} J, decode {measured_j - prefill_j:.1f} J; "
        f"timeline: prefill {timeline_prefill_j:.1f} J, decode {timeline_decode_j:.1f} J; "
        f"prefill pass {report.durations_s['prefill']:.2f} s, measured {report.durations_s['measure']:.2f} s"
    )
    assert report.metrics["energy/decode_j"] == pytest.approx(measured_j - prefill_j)  # GPU is the only source here
    assert (measured_j - prefill_j) == pytest.approx(timeline_decode_j, rel=0.15)
    assert 0.6 <= prefill_j / timeline_prefill_j <= 1.5
    assert report.tags["llem.energy.total_sources"] == "gpu"
