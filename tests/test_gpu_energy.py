"""The real NVML path on a real GPU (skipped without CUDA). Run by benchmarks/gpu_check.sh."""

import time

import pytest

torch = pytest.importorskip("torch")

from llem_mlflow.bench.device import synchronize  # noqa: E402
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
    monitor = EnergyMonitor(gpu_config(), synchronize)
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
    assert m["tokens/output_total"] == 16 * 64
    # a 124M-parameter model on a datacenter GPU: well above 0, far below 10 J per token
    assert 0 < m["energy/j_per_output_token"] < 10
    assert 0 <= m["energy/dynamic_j_per_output_token"] <= m["energy/j_per_output_token"]
    assert m["power/gpu_baseline_w"] > 0
    assert tags["llem.energy.gpu_method"] == "nvml_counter"
    assert "NVIDIA" in tags["llem.gpu.name"]
    assert tags["llem.device.type"] == "cuda"
