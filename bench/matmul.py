"""float32 matmul throughput, XLA (JAX) against PyTorch (MKL/oneDNN), on this CPU.

    python bench/matmul.py              # all cores on both sides
    python bench/matmul.py --threads=1  # one thread each, process CPU time

The train-step benchmark's ceiling: the shapes are those of the benchmark model's matmuls at
8 x 512 tokens (d_model 256, FFN 1024, vocab 8000), forward and both backward layouts, plus the
2048^3 matmul the MFU denominator uses. Prints one JSON object per shape: GFLOP/s of each side
(best of --reps) and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import best_seconds, machine_info, single_thread_env, use_clock  # noqa: E402

SHAPES = ((2048, 2048, 2048), (4096, 256, 1024), (4096, 1024, 256), (256, 4096, 1024),
          (4096, 256, 8000), (4096, 8000, 256), (8000, 4096, 256))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--reps", type=int, default=7)
  args = p.parse_args()
  if args.threads not in (1, os.cpu_count()):
    p.error(f"--threads: 1 or {os.cpu_count()}")
  if args.threads == 1:
    single_thread_env()
    use_clock("cpu")
  import jax
  import jax.numpy as jnp
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


if __name__ == "__main__":
  main()
