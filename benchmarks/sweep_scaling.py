"""Wall time of one CPU study run by the local executor (one point at a time) and by the Ray executor
(a local Ray instance, `--concurrency` points at once, no GPU per point).

    python benchmarks/sweep_scaling.py                      # 6 random:tiny points, 2 at once
    python benchmarks/sweep_scaling.py --points 12 --concurrency 4

Each side is the real `llem-mlflow sweep` command in a fresh sqlite store, so
the Ray side pays for starting its instance, as a user does. On a machine
with C free cores the ideal ratio is 1 / min(C, concurrency); each point's own
process start (imports) is CPU work too, so it parallelises as well as the
measurement does. Prints `ratio ray/local: X.XXX` (lower is faster).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def study(points: int, concurrency: int, max_output_tokens: int, n_prompts: int) -> dict:
    return {
        "name": "scaling",
        "base": {
            "model": "random:tiny",
            "max_output_tokens": max_output_tokens,
            "dataset": {"n": n_prompts},
            "warmup": {"enabled": False},
            "baseline": {"enabled": False},
            "energy": {"codecarbon": False},
        },
        "sweep": {"random_seed": list(range(1, points + 1))},
        "execution": {"executor": "local", "gpus_per_point": 0, "cpus_per_point": 1, "max_concurrent": concurrency},
    }


def timed_sweep(study_file: Path, executor: str, workdir: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / f'{executor}.db'}"
    command = [sys.executable, "-m", "llem_mlflow", "sweep", str(study_file), "--quiet", "--executor", executor,
               "--experiment-name", f"scaling-{executor}"]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{executor} sweep failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2, help="points at once on Ray")
    parser.add_argument("--max-output-tokens", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="llem-scaling-") as tmp:
        workdir = Path(tmp)
        study_file = workdir / "study.yaml"
        study_file.write_text(yaml.safe_dump(study(args.points, args.concurrency, args.max_output_tokens, args.prompts)))
        # Each seed's random model is built before the timed runs: both sides load it from the cache.
        os.environ.setdefault("LLEM_CACHE_DIR", str(workdir / "cache"))
        from llem_mlflow.bench.random_models import random_model_dir

        for seed in range(1, args.points + 1):
            random_model_dir("random:tiny", seed)
        local_s = timed_sweep(study_file, "local", workdir)
        ray_s = timed_sweep(study_file, "ray", workdir)
    print(f"cores: {os.cpu_count()}, points: {args.points}, concurrency on Ray: {args.concurrency}")
    print(f"local executor: {local_s:.1f} s")
    print(f"ray executor:   {ray_s:.1f} s (includes starting a local Ray instance)")
    print(f"ratio ray/local: {ray_s / local_s:.3f}")


if __name__ == "__main__":
    main()
