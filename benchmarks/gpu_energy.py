"""GPU energy benchmark without MLflow: a real-shaped random: model through the real core, measure().

    python benchmarks/gpu_energy.py [--model random:llama-3.2-1b] [--prompts 64] [--min-duration-s S] [--out DIR]

Prints the key figures (J/token, counter-vs-integral ratio, TTFT p50, tokens/s, the prefill/decode
split, the cold start, memory of the measured phase) and writes
them, with the energy artifacts, to --out. Runs where torch runs: MLflow is not needed.
The measured window repeats the prompt set until it lasts measure.min_duration_s (unset: the
meters' default, 5 s with NVML), so the counter-vs-integral check always has a long enough window.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = (
    "energy/j_per_output_token",
    "energy/dynamic_j_per_output_token",
    "check/counter_vs_integral_ratio",
    "latency/ttft_ms_p50",
    "throughput/output_tokens_per_s",
    "time/measure_s",
    "measure/passes",
    "energy/gpu_j_per_output_token",
    "energy/measured_j_per_output_token",
    "energy/gpu_j",
    "energy/total_j",
    "power/gpu_mean_w",
    "power/gpu_peak_w",
    "power/gpu_baseline_w",
    "energy/cpu_j",
    "emissions/kg_co2eq",
    "energy/prefill_j",
    "energy/decode_j",
    "energy/j_per_input_token",
    "energy/j_per_decode_token",
    "time/first_generate_s",
    "energy/first_generate_j",
    "latency/first_ttft_ms",
    "memory/measure_peak_rss_mb",
    "memory/measure_gpu_peak_allocated_mb",
    "memory/measure_gpu_peak_reserved_mb",
    "memory/measure_gpu_peak_used_mb",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llama-3.2-1b")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=64, help="more prompts, a longer measured window")
    parser.add_argument(
        "--min-duration-s", type=float, default=None, help="measure.min_duration_s (default: the meters' own, 5 s with NVML)"
    )
    parser.add_argument("--baseline-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("gpu_energy_out"))
    args = parser.parse_args()

    from llem_mlflow.config.models import ExperimentConfig
    from llem_mlflow.energy.artifacts import write_energy_artifacts
    from llem_mlflow.runner import Measurement

    try:
        import codecarbon  # noqa: F401

        use_codecarbon = True
    except ImportError:
        use_codecarbon = False
    cfg = ExperimentConfig(
        model=args.model,
        precision="bf16",
        max_input_tokens=256,
        max_output_tokens=args.output_tokens,
        decoder={"preset": "deterministic", "min_new_tokens": args.output_tokens},
        dataset={"source": "synthetic", "synthetic_input_tokens": 128, "n": args.prompts},
        pytorch={"batch_size": args.batch_size},
        baseline={"enabled": True, "duration_s": args.baseline_s},
        energy={"gpu": "nvml", "codecarbon": use_codecarbon, "sample_interval_ms": 100},
        measure={"prefill_split": True, "min_duration_s": args.min_duration_s},
    )
    measurement = Measurement(cfg)
    try:
        report = measurement.run()
        figures = dict(report.metrics)
        sampled_j = report.energy.sampled_energy_j("measure")
        if sampled_j and "energy/gpu_j" in figures:
            figures["check/counter_vs_integral_ratio"] = figures["energy/gpu_j"] / sampled_j
        args.out.mkdir(parents=True, exist_ok=True)
        artifacts = write_energy_artifacts(report.energy, args.out)
    finally:
        measurement.cleanup()
    (args.out / "figures.json").write_text(json.dumps({"metrics": figures, "tags": report.tags}, indent=2))

    print(f"model {args.model}  requests {len(report.records)}  output tokens {figures.get('tokens/output_total', 0):.0f}")
    for key in KEYS:
        value = figures.get(key)
        print(f"  {key:38s} {'absent' if value is None else f'{value:.6g}'}")
    for key, value in sorted(report.tags.items()):
        if key.startswith(("llem.energy.", "llem.warning.", "llem.gpu.", "llem.device.", "llem.measure.")):
            print(f"  {key} = {value}")
    print("artifacts:", ", ".join(str(p) for p in artifacts))


if __name__ == "__main__":
    main()
