"""GPU energy benchmark without MLflow: a real-shaped random: model through bench/ and energy/.

    python benchmarks/gpu_energy.py [--model random:llama-3.2-1b] [--min-seconds 10] [--out DIR]

Prints the key figures of issue 4 (J/token, counter-vs-integral ratio, TTFT
p50, tokens/s) and writes them, with the energy artifacts, to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llama-3.2-1b")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--min-seconds", type=float, default=10.0, help="repeat the prompt set until the window lasts this long")
    parser.add_argument("--baseline-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("gpu_energy_out"))
    args = parser.parse_args()

    from llem_mlflow.bench.device import synchronize
    from llem_mlflow.bench.generation import Generator
    from llem_mlflow.bench.loading import load_model
    from llem_mlflow.bench.prompts import load_prompts
    from llem_mlflow.bench.stats import latency_metrics
    from llem_mlflow.config.models import ExperimentConfig
    from llem_mlflow.energy.monitor import EnergyMonitor

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
    )
    monitor = EnergyMonitor(cfg, synchronize)
    try:
        monitor.measure_baseline()
        monitor.begin("load")
        loaded = load_model(cfg)
        monitor.end("load")
        generator = Generator(loaded, cfg)
        batches = generator.batches(load_prompts(cfg, loaded.tokenizer))
        monitor.begin("warmup")
        generator.run_batch(batches[0])
        monitor.end("warmup")
        monitor.begin("measure")
        records, started = [], time.monotonic()
        while not records or time.monotonic() - started < args.min_seconds:
            for batch in batches:
                records += generator.run_batch(batch)
        measured = monitor.end("measure")
    finally:
        monitor.close()

    tokens = sum(r.output_tokens for r in records)
    figures = monitor.metrics(measured, output_tokens=tokens, requests=len(records))
    figures.update(latency_metrics(records))
    sampled_j = monitor.sampled_energy_j("measure")
    if sampled_j and measured.gpu:
        figures["check/counter_vs_integral_ratio"] = measured.gpu.total_j / sampled_j
    figures["throughput/output_tokens_per_s"] = tokens / measured.duration_s
    figures["time/measure_s"] = measured.duration_s
    tags = monitor.tags()

    args.out.mkdir(parents=True, exist_ok=True)
    artifacts = monitor.write_artifacts(args.out)
    (args.out / "figures.json").write_text(json.dumps({"metrics": figures, "tags": tags}, indent=2))

    print(f"model {args.model}  requests {len(records)}  output tokens {tokens}  window {measured.duration_s:.1f} s")
    for key in (
        "energy/j_per_output_token",
        "energy/dynamic_j_per_output_token",
        "check/counter_vs_integral_ratio",
        "latency/ttft_ms_p50",
        "throughput/output_tokens_per_s",
        "energy/gpu_j",
        "energy/total_j",
        "power/gpu_mean_w",
        "power/gpu_peak_w",
        "power/gpu_baseline_w",
        "energy/cpu_j",
        "emissions/kg_co2eq",
    ):
        value = figures.get(key)
        print(f"  {key:38s} {'absent' if value is None else f'{value:.6g}'}")
    for key, value in sorted(tags.items()):
        if key.startswith(("llem.energy.", "llem.warning.", "llem.gpu.")):
            print(f"  {key} = {value}")
    print("artifacts:", ", ".join(str(p) for p in artifacts))


if __name__ == "__main__":
    main()
