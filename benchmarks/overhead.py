"""Overhead of our measured path: Generator.run_batch (streamer timestamps, token
accounting, seeding) against a bare model.generate loop on the same batches
and the same generate kwargs.

    python benchmarks/overhead.py                  # random:tiny, CPU; target ratio <= 1.05
    python benchmarks/overhead.py --model random:gpt2 --n 32 --batch-size 8   # on a GPU: target <= 1.02

Repeats alternate bare/ours so drift (other load, clocks) hits both sides; the
ratio is of the medians. Prints `ratio ours/bare: X.XXX`.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--n", type=int, default=16, help="prompts per repeat")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats of each side")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()

    import torch

    from llem_mlflow.bench.device import synchronize
    from llem_mlflow.bench.generation import Generator
    from llem_mlflow.bench.loading import load_model
    from llem_mlflow.bench.prompts import load_prompts
    from llem_mlflow.config.models import ExperimentConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ExperimentConfig(
        model=args.model,
        max_input_tokens=64,
        max_output_tokens=args.max_output_tokens,
        dataset={"n": args.n},
        decoder={"preset": "deterministic", "min_new_tokens": args.max_output_tokens},
        pytorch={"batch_size": args.batch_size},
    )
    loaded = load_model(cfg)
    generator = Generator(loaded, cfg)
    batches = generator.batches(load_prompts(cfg, loaded.tokenizer))
    kwargs = generator.generate_kwargs

    def bare() -> float:
        synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                torch.manual_seed(cfg.random_seed + batch.index)
                loaded.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
        synchronize()
        return time.perf_counter() - start

    def ours() -> float:
        synchronize()
        start = time.perf_counter()
        for batch in batches:
            generator.run_batch(batch)
        synchronize()
        return time.perf_counter() - start

    bare(), ours()  # warm both paths (allocator, kernels, lazy imports)
    times: dict[str, list[float]] = {"bare": [], "ours": []}
    for i in range(args.repeats):
        order = (("bare", bare), ("ours", ours)) if i % 2 == 0 else (("ours", ours), ("bare", bare))
        for name, fn in order:
            times[name].append(fn())

    tokens = args.n * args.max_output_tokens
    print(f"model {args.model} on {loaded.device}, {args.n} prompts x {args.max_output_tokens} tokens, batch {args.batch_size}, {args.repeats} repeats")
    for name, values in times.items():
        print(f"  {name:4s}: median {statistics.median(values):.4f} s  min {min(values):.4f} s  ({tokens / statistics.median(values):.0f} tok/s)")
    ratio = statistics.median(times["ours"]) / statistics.median(times["bare"])
    print(f"ratio ours/bare (min): {min(times['ours']) / min(times['bare']):.3f}")
    print(f"ratio ours/bare: {ratio:.3f}")


if __name__ == "__main__":
    main()
