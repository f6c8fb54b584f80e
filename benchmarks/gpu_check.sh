#!/usr/bin/env bash
# Device check for GPU energy (issue 4): run on a GPU machine with no network whose python3
# already has torch, transformers, nvidia-ml-py, pandas, pyarrow, matplotlib (the 'cuda' image).
#
#   bash benchmarks/gpu_check.sh [WHEEL_DIR]        (WHEEL_DIR defaults to .whl)
#
# It installs the carried wheels, runs the `gpu` tests, then a real-shaped random: benchmark, and
# prints J/token, the counter-vs-integral ratio, TTFT p50 and tokens/s. Output also goes to $OUT.
#
# Preparing the wheel folder (on a machine with PyPI access, in the repo root; the device machine runs
# Python 3.12 on x86-64). pydantic and codecarbon are what the image lacks; --no-deps keeps the folder
# small (~25 MB), so each missing dependency that the tracker imports is named, pinned to the versions
# the project's venv uses (pydantic-core must match pydantic exactly). CodeCarbon's CLI-only needs
# (authlib, joserfc, questionary) are left out: the tracker never imports them.
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing-extensions==4.16.0 codecarbon==3.3.2 arrow==1.4.0 pycountry==26.2.16 rapidfuzz==3.14.6
# then call the device tool with carry [".whl"] and the command `bash benchmarks/gpu_check.sh .whl`.
# The package itself is not installed: PYTHONPATH=. makes `llem_mlflow` importable without mlflow.
set -uo pipefail

WHEELS="${1:-.whl}"
OUT="${OUT:-/tmp/llem-gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LLEM_CACHE_DIR=/tmp/llem-cache

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels in $WHEELS: relying on what python3 already has"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

nvidia-smi --query-gpu=name,driver_version,power.limit,persistence_mode --format=csv | tee "$OUT/nvidia_smi.csv"
python3 -c "import torch, pynvml, pydantic; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# The gpu tests only (the rest of the suite needs mlflow); -p no:cacheprovider keeps the tree clean.
python3 -m pytest -p no:cacheprovider -q -s -m gpu tests/test_gpu_energy.py tests/test_bench_loading.py \
  tests/test_bench_generation.py 2>&1 | tee "$OUT/pytest_gpu.log"
tests_rc=${PIPESTATUS[0]}

# Issue 3's overhead target on a GPU: ours/bare <= 1.02.
python3 benchmarks/overhead.py --model random:gpt2 --n 32 --batch-size 8 2>&1 | tee "$OUT/overhead.log"

python3 benchmarks/gpu_energy.py --model random:llama-3.2-1b --prompts 96 --baseline-s 5 \
  --out "$OUT/bench" 2>&1 | tee "$OUT/benchmark.log"
bench_rc=${PIPESTATUS[0]}

echo "gpu tests rc=$tests_rc  benchmark rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
