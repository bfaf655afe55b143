"""The chunked grouped-SwiGLU kernel of several source trees, side by side in one process.

    python bench/chunked_ab.py --trees=/path/to/main,. --experts=8,64
    python bench/chunked_ab.py --trees=/path/to/main,. --threads=1   # one core, CPU time

For changing the CPU kernel (medmoe_jax/model/gmm.py): each tree's gmm.py is loaded as its own
module, and their fwd+bwd calls are timed interleaved with a dense SwiGLU of the same active FLOPs
(top_k FFNs of width d_ff on every token), so every version sees the same machine load. Prints
one JSON object per expert count: the dense time and, per tree, its time and ratio to the dense.
Routing is uniform at random (balanced up to sampling noise). With --threads=1, run it under
`taskset -c 0` so that one core is really all it has.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import machine_info, seconds, single_thread_env, use_clock  # noqa: E402


def load_gmm(tree: str, name: str):
  path = os.path.join(tree, "medmoe_jax", "model", "gmm.py")
  if not os.path.exists(path):
    raise SystemExit(f"--trees: no {path}")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--trees", required=True, help="comma-separated source trees to compare")
  p.add_argument("--experts", default="8,64")
  p.add_argument("--top_k", type=int, default=2)
  p.add_argument("--tokens", type=int, default=8192)
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--d_ff", type=int, default=512)
  p.add_argument("--reps", type=int, default=11)
  p.add_argument("--threads", type=int, choices=(1, os.cpu_count()), default=os.cpu_count(),
                 help="1: XLA held to one thread, timed by process CPU time")
  args = p.parse_args()
  if args.threads == 1:
    single_thread_env()
    use_clock("cpu")
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bench.moe_layer import dense_equiv_args, dense_equiv_fn

  trees = args.trees.split(",")
  kernels = [load_gmm(t, f"gmm_{i}") for i, t in enumerate(trees)]
  k, d, f, t = args.top_k, args.d_model, args.d_ff, args.tokens
  r = np.random.RandomState(0)
  dense, dense_args = dense_equiv_fn(k), dense_equiv_args(t, d, f, k)
  print(json.dumps(dict(machine_info(), threads=args.threads, trees=trees)), flush=True)
  for e in [int(v) for v in args.experts.split(",")]:
    g0 = kernels[0]  # the first tree's layout (with its spare tail rows, where it has them)
    tail = g0.tail_rows_for("chunked") if hasattr(g0, "tail_rows_for") else 0
    layout = g0.sorted_layout(jnp.asarray(r.randint(0, e, t * k), jnp.int32), e, 8, 1, tail)
    x = jnp.asarray(r.randn(layout.num_rows, d), jnp.float32)
    w = [jnp.asarray(r.randn(*s) * 0.05, jnp.float32) for s in ((e, d, f), (e, d, f), (e, f, d))]
    calls = [(dense, dense_args)]
    for g in kernels:
      loss = lambda x, *w, g=g: jnp.sum(g.chunked_swiglu(x, *w, layout.starts, layout.sizes) ** 2)
      calls.append((jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))), (x, *w)))
    for fn, a in calls:  # compile, then one warm call
      jax.block_until_ready(fn(*a))
      jax.block_until_ready(fn(*a))
    times = [[] for _ in calls]
    for _ in range(args.reps):
      for i, (fn, a) in enumerate(calls):
        times[i].append(seconds(lambda: jax.block_until_ready(fn(*a))))
    ms = [1e3 * float(np.median(ts)) for ts in times]
    print(json.dumps(dict(num_experts=e, dense_equiv_ms=round(ms[0], 1), **{
        tree: dict(fwd_bwd_ms=round(m, 1), ratio=round(m / ms[0], 3))
        for tree, m in zip(trees, ms[1:])})), flush=True)


if __name__ == "__main__":
  main()
