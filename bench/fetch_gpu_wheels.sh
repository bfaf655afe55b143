#!/bin/bash
# Download into bench/wheels (gitignored) the pure-Python wheels bench/gpu_step.sh installs on a
# GPU machine whose image has JAX (CUDA), flax, optax, orbax, torch and transformers but nothing
# else, and no network. All are py3-none-any except pydantic-core (tokamax needs pydantic),
# fetched for CPython 3.10-3.13 on x86_64 Linux; pip picks the one that fits. About 10 MB; the
# device tool carries the folder (carry: bench/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/wheels
python -m pip download -q --no-deps --only-binary=:all: -d bench/wheels \
  ml-collections tokamax==0.0.12 qwix einshape jaxtyping wadler-lindig typeguard==2.13.3 \
  immutabledict tensorboardx pydantic annotated-types typing-inspection
core=$(python -m pip download --no-deps -q -d /tmp/medmoe_pyd pydantic 2>/dev/null; \
       unzip -p /tmp/medmoe_pyd/pydantic-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p')
for v in 3.10 3.11 3.12 3.13; do
  python -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version "$v" -d bench/wheels "pydantic-core==$core"
done
ls -la bench/wheels
