"""The whole MoE block of several source trees, in alternating processes, against one dense
reference (this tree's `bench/moe_layer.py` definition, so every tree is measured the same way).

  python bench/block_ab.py --trees=/path/to/old,. --experts=7,8,64 --rounds=3
  taskset -c 0 python bench/block_ab.py --trees=/path/to/old,. --threads=1   # CPU time, 1 core

On a machine whose speed drifts by 10-15% from minute to minute, only alternation compares
versions. Each round runs one process per tree; each process times the dense reference and the
blocks (`auto` backend) interleaved, rep by rep, and prints one JSON line: tree, round, the
ratio per expert count, 64 / 8 style ratios of the largest to the second expert count, and the
dense time. (bench/chunked_ab.py compares the kernels alone in one process.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(tree: str, experts, reps: int, round_: int, threads: int):
  sys.path.insert(1, HERE)
  from bench.common import seconds, single_thread_env, use_clock
  if threads == 1:  # XLA on one thread, timed by this process's CPU time: what the work costs
    single_thread_env()
    use_clock("cpu")
  sys.path.insert(0, os.path.abspath(tree))
  import medmoe_jax.model.moe  # noqa: F401  the tree's, imported before bench.moe_layer adds ours
  from medmoe_jax.model.spec import ModelSpec, MoESpec
  import jax
  import numpy as np
  from bench.moe_layer import dense_equiv_args, dense_equiv_fn, moe_block_call

  t, s, d, f, k = 8192, 2048, 128, 512, 2  # bench/moe_layer.py's defaults
  dense_args = dense_equiv_args(t, d, f, k)
  _, x, ct = dense_args
  calls = {"dense": (dense_equiv_fn(k), dense_args)}
  for e in experts:
    spec = ModelSpec(d_model=d, moe=MoESpec(num_experts=e, top_k=k, d_ff=f,
                                            language_routing="none"))
    calls[e] = moe_block_call(spec, x, ct, s)
  for fn, a in calls.values():  # compile, then one warm call
    jax.block_until_ready(fn(*a))
    jax.block_until_ready(fn(*a))
  times = {key: [] for key in calls}
  for _ in range(reps):
    for key, (fn, a) in calls.items():
      times[key].append(seconds(lambda: jax.block_until_ready(fn(*a))))
  med = {key: float(np.median(v)) for key, v in times.items()}
  ratio = {str(e): round(med[e] / med["dense"], 3) for e in experts}
  out = dict(tree=tree, round=round_, ratio=ratio, dense_ms=round(1e3 * med["dense"], 1),
             threads=threads)
  if len(experts) > 1:
    out[f"{experts[-1]}/{experts[-2]}"] = round(med[experts[-1]] / med[experts[-2]], 3)
  print(json.dumps(out), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--trees", help="comma-separated source trees to compare (required)")
  p.add_argument("--experts", default="7,8,64")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--reps", type=int, default=9)
  p.add_argument("--threads", type=int, choices=(1, 2), default=2,
                 help="1: XLA on one thread, CPU time (run under taskset -c 0); 2: wall clock")
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
  a = p.parse_args()
  experts = [int(v) for v in a.experts.split(",")]
  if a.worker:
    return worker(a.worker, experts, a.reps, a.round, a.threads)
  if not a.trees:
    p.error("--trees is required")
  for tree in a.trees.split(","):
    if not os.path.isdir(os.path.join(tree, "medmoe_jax")):
      p.error(f"--trees: {tree} has no medmoe_jax/")
  for i in range(a.rounds):
    for tree in a.trees.split(","):
      subprocess.run([sys.executable, __file__, f"--worker={tree}", f"--experts={a.experts}",
                      f"--reps={a.reps}", f"--round={i}", f"--threads={a.threads}"], check=True)


if __name__ == "__main__":
  main()
