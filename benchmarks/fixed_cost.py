"""Fixed cost of a whole `llem-mlflow run` against a bare script doing the same generation.

    python benchmarks/fixed_cost.py [--repeats 3] [--config examples/quickstart.yaml]

Both sides run as fresh processes, interleaved, on the same model (built into the cache
first, outside the timing), the same prompts and batches: the bare side is transformers
only (load, tokenize, generate), the llem side is the real command into a sqlite store
(created before the first repeat, as a user's second run finds it) with CodeCarbon off
(a meter the bare script does not have).

Memory is sampled every 20 ms over the whole process tree: "peak RSS" is the measuring
process's own (what competes with the model for host memory), "tree" the highest sum
over all processes of the command at one moment (llem's includes its MLflow reporter).

Prints the medians, `ratio wall llem/bare: X.XX` (target <= 1.3), the RSS ratios
(target <= 1.2), and each phase's share of the llem command's wall time (startup =
imports and config before the first phase; report = after the last phase).

`--peer "COMMAND"` adds a peer tool's whole command (a shell line, its own config set to the
same model folder, prompts and batches: `{model_dir}` in it is replaced by the model's folder),
run interleaved with the others, and prints `ratio wall llem/peer` (target <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BARE = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
spec = json.load(open(sys.argv[1]))
torch.manual_seed(spec["seed"])
tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
tokenizer.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
prompts, size = spec["prompts"], spec["batch_size"]
kwargs = dict(max_new_tokens=spec["max_new_tokens"], min_new_tokens=spec["max_new_tokens"], do_sample=False,
              pad_token_id=tokenizer.pad_token_id)
batches = [tokenizer(prompts[i:i + size], padding=True, truncation=True, max_length=spec["max_input_tokens"],
                     return_tensors="pt") for i in range(0, len(prompts), size)]
with torch.inference_mode():
    for enc in batches[: spec["warmup_batches"]] + batches:
        model.generate(**enc, **kwargs)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples" / "quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer", default=None, help="a peer tool's command line ({model_dir}: the model's folder)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llem-fixed-cost-"))
    try:
        spec_path = prepare(args.config, work)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments()  # create and migrate the store once
        bare, llem, peer, shares = [], [], [], []
        model_dir = json.loads(spec_path.read_text())["model_dir"]
        for repeat in range(args.repeats):
            bare.append(run_child([sys.executable, "-c", BARE, str(spec_path)], work))
            if args.peer:
                peer.append(run_child(["bash", "-c", args.peer.replace("{model_dir}", model_dir)], work))
            command = [sys.executable, "-m", "llem_mlflow", "run", args.config, "--quiet", "-o", "energy.codecarbon=false",
                       "--run-name", f"fixed-cost-{repeat}"]  # fmt: skip
            llem.append(run_child(command, work, {"MLFLOW_TRACKING_URI": uri}))
            shares.append(phase_shares(uri, f"fixed-cost-{repeat}", llem[-1][0]))
            print(f"repeat {repeat + 1}: bare {fmt(bare[-1])} | llem {fmt(llem[-1])}" + (f" | peer {fmt(peer[-1])}" if peer else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    b, m = [med(x[i] for x in bare) for i in range(3)], [med(x[i] for x in llem) for i in range(3)]
    print(f"bare script:     {fmt(b)}")
    print(f"llem-mlflow run: {fmt(m)}")
    print(f"ratio wall llem/bare: {m[0] / b[0]:.2f}   (target <= 1.3)")
    print(f"ratio peak_rss llem/bare: {m[1] / b[1]:.2f}   (measuring process; target <= 1.2)")
    print(f"ratio tree_rss llem/bare: {m[2] / b[2]:.2f}   (all processes of the command)")
    if peer:
        p = [med(x[i] for x in peer) for i in range(3)]
        print(f"peer command:    {fmt(p)}")
        print(f"ratio wall llem/peer: {m[0] / p[0]:.2f}   (target <= 1.0)")
        print(f"ratio peak_rss llem/peer: {m[1] / p[1]:.2f}   ratio tree_rss llem/peer: {m[2] / p[2]:.2f}")
    print("share of the llem command's wall time (median over repeats):")
    for phase in shares[0]:
        print(f"  {phase:<12} {med(s[phase] for s in shares):6.1%}")


def prepare(config: str, work: Path) -> Path:
    """Build the random model into the cache and write what the bare script needs."""
    from llem_mlflow.bench.loading import load_model
    from llem_mlflow.bench.prompts import load_prompts
    from llem_mlflow.bench.random_models import is_random_model, random_model_dir
    from llem_mlflow.config.loader import load_config

    cfg = load_config(config)
    loaded = load_model(cfg)  # builds a random: preset into the cache once
    model_dir = str(random_model_dir(cfg.model, cfg.random_seed)[0]) if is_random_model(cfg.model) else cfg.model
    spec = {
        "model_dir": model_dir,
        "seed": cfg.random_seed,
        "prompts": [p.text for p in load_prompts(cfg, loaded.tokenizer)],
        "batch_size": cfg.pytorch.batch_size or 1,
        "max_new_tokens": cfg.max_output_tokens,
        "max_input_tokens": cfg.max_input_tokens,
        "warmup_batches": cfg.warmup.n_batches if cfg.warmup.enabled else 0,
    }
    path = work / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def fmt(sample: tuple[float, float, float] | list[float]) -> str:
    return f"{sample[0]:.2f} s, peak RSS {sample[1]:.0f} MiB, tree {sample[2]:.0f} MiB"


def run_child(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Wall seconds, the process's own peak RSS and the tree's peak summed RSS (MiB)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, own, tree = psutil.Process(process.pid), 0.0, 0.0
    while process.poll() is None:
        try:
            rss = [root.memory_info().rss] + [c.memory_info().rss for c in root.children(recursive=True)]
        except psutil.Error:  # a process ended between the listing and the reading
            continue
        own, tree = max(own, rss[0]), max(tree, sum(rss))
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{process.stderr.read().decode()[-2000:]}")
    process.stderr.close()
    return wall, own / 2**20, tree / 2**20


def phase_shares(uri: str, run_name: str, wall_s: float) -> dict[str, float]:
    from mlflow import MlflowClient

    run = MlflowClient(uri).search_runs(["0"], filter_string=f"attributes.run_name = '{run_name}'")[0]
    m = run.data.metrics
    phases = ("startup", "environment", "baseline", "load", "warmup", "measure")
    shares = {name: m.get(f"time/{name}_s", 0.0) for name in phases}
    shares["report"] = max(wall_s - sum(shares.values()), 0.0)
    return {name: seconds / wall_s for name, seconds in shares.items()}


if __name__ == "__main__":
    main()
