"""float32 matmul throughput, XLA (JAX) against PyTorch (MKL/oneDNN), on this CPU.

    python bench/matmul.py              # all cores on both sides
    python bench/matmul.py --threads=1  # one thread each, process CPU time
    python bench/matmul.py --rows       # XLA only: throughput against the row count

The train-step benchmark's ceiling: the shapes are those of the benchmark model's matmuls at
8 x 512 tokens (d_model 256, FFN 1024, vocab 8000), forward and both backward layouts, plus the
2048^3 matmul the MFU denominator uses. Prints one JSON object per shape: GFLOP/s of each side
(best of --reps) and their ratio.

--rows: the MoE layer benchmark's expert matmul ([rows, 128] x [128, 1024], gate and up side by
side) for row counts from 128 to 8192: an expert of a 64-expert layer sees about 256 rows of an
8192-token batch at top-2, a dense FFN all 8192. Only XLA, median of --reps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (best_seconds, machine_info, median_seconds, single_thread_env,  # noqa: E402
                          use_clock)

EXPERT_ROWS = (128, 256, 512, 1024, 2048, 8192)
SHAPES = ((2048, 2048, 2048), (4096, 256, 1024), (4096, 1024, 256), (256, 4096, 1024),
          (4096, 256, 8000), (4096, 8000, 256), (8000, 4096, 256))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--rows", action="store_true", help="XLA throughput against the row count")
  args = p.parse_args()
  if args.threads not in (1, os.cpu_count()):
    p.error(f"--threads: 1 or {os.cpu_count()}")
  if args.threads == 1:
    single_thread_env()
    use_clock("cpu")
  import jax
  import jax.numpy as jnp
  if args.rows:
    return rows_sweep(jax, jnp, args)
  import torch
  torch.set_num_threads(args.threads)

  def best(fn):
    fn()  # warm-up (compiles the jitted side)
    return best_seconds(fn, args.reps)

  print(json.dumps({**machine_info(), "torch": torch.__version__, "threads": args.threads}))
  for m, k, n in SHAPES:
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    f = jax.jit(lambda x, y: x @ y)
    ta, tb = torch.ones(m, k), torch.ones(k, n)
    flops = 2 * m * k * n / 1e9
    jax_gf = flops / best(lambda: f(a, b).block_until_ready())
    torch_gf = flops / best(lambda: ta @ tb)
    print(json.dumps({"m": m, "k": k, "n": n, "jax_gflops": round(jax_gf, 1),
                      "torch_gflops": round(torch_gf, 1),
                      "torch_over_jax": round(torch_gf / jax_gf, 2)}), flush=True)


def rows_sweep(jax, jnp, args):
  print(json.dumps({**machine_info(), "threads": args.threads}))
  f = jax.jit(lambda x, y: x @ y)
  for m in EXPERT_ROWS:
    a, b = jnp.ones((m, 128)), jnp.ones((128, 1024))
    f(a, b).block_until_ready()
    t = median_seconds(lambda: f(a, b).block_until_ready(), args.reps)
    print(json.dumps({"m": m, "k": 128, "n": 1024,
                      "jax_gflops": round(2 * m * 128 * 1024 / t / 1e9, 1)}), flush=True)


if __name__ == "__main__":
  main()
