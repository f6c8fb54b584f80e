"""The peer's side of `fixed_cost.py`: LLenergyMeasure 0.7.0 on the quickstart's workload.

    pip install --no-deps llenergymeasure==0.7.0   # its dependencies are ours already
    python benchmarks/fixed_cost.py --peer "python benchmarks/peer_llenergymeasure.py {model_dir}"

The same random:tiny folder, the built-in prompts' count (16), 16 new tokens, batch 4, fp32,
greedy, energy off (our side runs with CodeCarbon off too). Differences, named: its prompts are
its own built-in set (aienergyscore) cut to 256 tokens like ours; its warmup is off, because it
ends with a "thermal floor" sleep of at least 30 s, which is method, not fixed cost (ours warms
up with one batch, about 1% of our wall time). Its pre-flight refuses a machine without CUDA;
on a CPU this shim skips that one check, nothing else.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

CONFIG = """\
engine: transformers
serving_mode: offline
task:
  model: "{model_dir}"
  dataset: {{source: aienergyscore, n_prompts: 16}}
  max_input_tokens: 256
  max_output_tokens: 16
  random_seed: 42
measurement:
  baseline: {{enabled: false}}
  energy_sampler: null
offline:
  warmup: {{enabled: false}}
transformers:
  engine_params: {{dtype: float32}}
  sampling_params: {{do_sample: false, min_new_tokens: 16}}
  llem_execution: {{batch_size: 4}}
"""


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        import llenergymeasure.harness.preflight as preflight

        preflight._check_cuda_available = lambda: True
    from llenergymeasure.cli import app

    work = Path(tempfile.mkdtemp(prefix="llenergymeasure-"))
    config = work / "peer.yaml"
    config.write_text(CONFIG.format(model_dir=sys.argv[1]))
    sys.argv = ["llem", "run", str(config), "--quiet", "-o", str(work / "results")]
    app()


if __name__ == "__main__":
    main()
