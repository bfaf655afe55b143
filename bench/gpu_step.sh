#!/bin/bash
# bench/gpu_step.py on a lent GPU machine (no network): install the wheels carried in
# bench/wheels (bench/fetch_gpu_wheels.sh fills it here), then run the benchmark; the JSON goes
# to $OUT/gpu_step.json (or bench/results/gpu_step.json). Extra arguments go to gpu_step.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d bench/wheels ] && ls bench/wheels/*.whl >/dev/null 2>&1; then
  # --no-deps: the image's jax, flax, torch stay as they are; only what it lacks is added
  # (pip skips what is installed, and picks the pydantic-core built for this Python).
  python -m pip install -q --no-index --no-deps --find-links bench/wheels \
    ml-collections tokamax qwix einshape jaxtyping wadler-lindig typeguard immutabledict \
    tensorboardx pydantic pydantic-core annotated-types typing-inspection
fi
python -c "import jax; print(jax.__version__, jax.devices())"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-bench/results}"
mkdir -p "$out"
python bench/gpu_step.py --out "$out/gpu_step.json" "$@"
