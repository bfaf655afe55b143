"""What fresh memory costs: page faults and temporary bytes per call of the MoE block and its
dense equivalent (the functions `bench/moe_layer.py` times, same shapes).

  python bench/page_faults.py
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python bench/page_faults.py   # malloc's mmaps on THP
  (bench/malloc_ab.py names the settings and times them side by side)

XLA:CPU allocates each call's temporaries as one block; above glibc's mmap threshold (32 MB at
most) that block is a fresh mapping every call, so every 4 KB page is faulted in again on first
touch. Prints one JSON object per function: temp_mib (XLA's compiled temporary size),
minor_faults and sys_ms per call (getrusage over --reps calls), wall_ms (median).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import machine_info  # noqa: E402
from bench.moe_layer import dense_equiv_args, dense_equiv_fn, moe_block_call  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from medmoe_jax.model.spec import ModelSpec, MoESpec  # noqa: E402


def measure(name, f, args, reps):
  temp = f.lower(*args).compile().memory_analysis().temp_size_in_bytes
  jax.block_until_ready(f(*args))
  jax.block_until_ready(f(*args))
  before, walls = resource.getrusage(resource.RUSAGE_SELF), []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    walls.append(time.perf_counter() - t)
  after = resource.getrusage(resource.RUSAGE_SELF)
  return dict(function=name, temp_mib=round(temp / 2 ** 20, 1),
              minor_faults=round((after.ru_minflt - before.ru_minflt) / reps),
              sys_ms=round(1e3 * (after.ru_stime - before.ru_stime) / reps, 1),
              wall_ms=round(1e3 * float(np.median(walls)), 1))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--experts", default="7,64")
  p.add_argument("--top_k", type=int, default=2)
  p.add_argument("--tokens", type=int, default=8192)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--d_ff", type=int, default=512)
  p.add_argument("--reps", type=int, default=5)
  a = p.parse_args()
  print(json.dumps(machine_info()), flush=True)  # with the allocator settings in effect
  dense_args = dense_equiv_args(a.tokens, a.d_model, a.d_ff, a.top_k)
  _, x, ct = dense_args
  print(json.dumps(measure("dense_equiv", dense_equiv_fn(a.top_k), dense_args, a.reps)), flush=True)
  for e in [int(v) for v in a.experts.split(",")]:
    spec = ModelSpec(d_model=a.d_model, moe=MoESpec(num_experts=e, top_k=a.top_k, d_ff=a.d_ff,
                                                    language_routing="none"))
    fn, args = moe_block_call(spec, x, ct, a.seq)
    print(json.dumps(measure(f"moe_{e}_experts", fn, args, a.reps)), flush=True)


if __name__ == "__main__":
  main()
