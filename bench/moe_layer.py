"""MoE layer fwd+bwd time against a dense SwiGLU doing the same active FLOPs.

  python bench/moe_layer.py                       # the sweep in BENCHMARKS.md
  python bench/moe_layer.py --experts=7,64 --backends=auto --reps=5

Prints one JSON object per line: backend, num_experts, top_k, tokens, d_model, d_ff, fwd_bwd_ms
(the whole MoE block: router, routing, dispatch, experts, combine; its output and the gradients
for every parameter and the input), dense_equiv_ms (top_k SwiGLU FFNs of width d_ff on the same
tokens, fwd+bwd, output and gradients, measured in the same run, interleaved with the MoE
timings so both see the same machine load), ratio = fwd_bwd_ms / dense_equiv_ms, plus
dropped_fraction and the kernel/capacity used.
Times are medians over --reps repetitions (each after a warm-up call). Routing is the learned
router at init (near uniform), no language forcing, so loads are balanced up to sampling noise.

On a machine shared with other jobs, wall-clock times of a multi-threaded XLA swing by 2x from
one minute to the next. `--clock=cpu` measures the process's CPU time instead; with XLA held to
one thread it is what the computation costs, whatever else runs:
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    taskset -c 0 python bench/moe_layer.py --clock=cpu
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import machine_info, seconds, use_clock  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from medmoe_jax.model import moe  # noqa: E402
from medmoe_jax.model.spec import ModelSpec, MoESpec  # noqa: E402

# name -> (MoESpec.backend, MoESpec.grouped_matmul)
BACKENDS = {
    "auto": ("auto", "auto"),
    "dense": ("dense", "auto"),
    "capacity": ("capacity", "auto"),
    "dropless_chunked": ("dropless", "chunked"),
    "dropless_ragged_dot": ("dropless", "ragged_dot"),
}


def _timed(f, *args):
  return seconds(lambda: jax.block_until_ready(f(*args)))


# Both timed functions return the layer's output with the gradients, as a layer in a network
# must (the next layer reads it). The loss sum(y * ct) is linear in y, so without that XLA drops
# the dense FFN's down projection from the forward pass (a third of its forward matmuls), while
# the MoE cannot drop its own (the router's gradient needs the experts' outputs).


def dense_equiv_fn(top_k: int):
  """top_k SwiGLU FFNs of width d_ff on every token: the MoE's active FLOPs without dispatch.
  Returns (grads of params and x, y)."""

  def loss(params, x, ct):
    y = 0.0
    for wg, wu, wo in params:
      y = y + (jax.nn.silu(x @ wg) * (x @ wu)) @ wo
    return jnp.sum(y * ct), y

  return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))


def dense_equiv_args(tokens: int, d_model: int, d_ff: int, top_k: int):
  """(params, x, ct) for dense_equiv_fn: x and the output cotangent ct are [tokens, d_model]."""
  r = np.random.RandomState(0)
  x, ct = (jnp.asarray(r.randn(tokens, d_model), jnp.float32) for _ in range(2))
  shapes = ((d_model, d_ff), (d_model, d_ff), (d_ff, d_model))
  params = [tuple(jnp.asarray(r.randn(*s) * 0.02, jnp.float32) for s in shapes)
            for _ in range(top_k)]
  return params, x, ct


def moe_fn(spec: ModelSpec, lang, valid):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: moe.MoEFeedForward(spec, rngs=nnx.Rngs(0))))

  def loss(params, x, ct):
    y, aux = nnx.merge(graphdef, params)(x, lang, valid, train=True)
    return jnp.sum(y * ct), (y, aux["dropped_fraction"])

  return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))


def moe_block_call(spec: ModelSpec, x, ct, seq: int):
  """(moe_fn, its args) for the block of `spec` at init on x, ct: [tokens, d_model], cut into
  sequences of `seq` tokens (the capacity groups); no language tags, no padding."""
  b = x.shape[0] // seq
  lang, valid = jnp.full((b, seq), -1, jnp.int32), jnp.ones((b, seq), bool)
  params = nnx.to_pure_dict(nnx.state(moe.MoEFeedForward(spec, rngs=nnx.Rngs(0)), nnx.Param))
  return moe_fn(spec, lang, valid), (params, x.reshape(b, seq, -1), ct.reshape(b, seq, -1))


def run_one(name, num_experts, args, dense, dense_args):
  backend, kernel = BACKENDS[name]
  m = MoESpec(num_experts=num_experts, top_k=args.top_k, d_ff=args.d_ff, language_routing="none",
              backend=backend, grouped_matmul=kernel, capacity_factor_train=args.capacity_factor)
  spec = ModelSpec(d_model=args.d_model, moe=m)
  r = np.random.RandomState(1)
  x, ct = (jnp.asarray(r.randn(args.tokens, args.d_model), jnp.float32) for _ in range(2))
  f, f_args = moe_block_call(spec, x, ct, args.seq)
  first = _timed(f, *f_args)   # compile + first run
  first = _timed(f, *f_args)   # warm
  dropped = float(f(*f_args)[1][1])  # blocks: nothing may still run when timing starts
  reps = args.reps if first < args.slow_s else 1
  t_moe, t_dense = [], []
  for _ in range(reps):
    t_dense.append(_timed(dense, *dense_args))
    t_moe.append(_timed(f, *f_args))
  ms, dms = 1e3 * float(np.median(t_moe)), 1e3 * float(np.median(t_dense))
  resolved = moe.resolve_backend(backend)
  out = dict(backend=name, num_experts=num_experts, top_k=args.top_k, tokens=args.tokens,
             d_model=args.d_model, d_ff=args.d_ff, fwd_bwd_ms=round(ms, 2),
             dense_equiv_ms=round(dms, 2), ratio=round(ms / dms, 3),
             dropped_fraction=round(dropped, 4), reps=reps, resolved=resolved)
  if resolved == "dropless":
    out["grouped_matmul"] = moe.resolve_grouped_matmul(kernel)
  if resolved == "capacity":
    out["capacity_factor"] = args.capacity_factor
    out["seq"] = args.seq
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--experts", default="4,7,8,16,32,64")
  p.add_argument("--backends", default="auto,dropless_chunked,capacity,dropless_ragged_dot,dense")
  p.add_argument("--top_k", type=int, default=2)
  p.add_argument("--tokens", type=int, default=8192, help="tokens per step on this device")
  p.add_argument("--seq", type=int, default=2048, help="sequence length (capacity groups)")
  p.add_argument("--d_model", type=int, default=128)
  p.add_argument("--d_ff", type=int, default=512)
  p.add_argument("--capacity_factor", type=float, default=1.25)
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--slow_s", type=float, default=10.0,
                 help="configurations slower than this (s per call) are timed once")
  p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                 help="wall: elapsed time; cpu: process CPU time (see above)")
  p.add_argument("--info", action="store_true", help="print machine and versions first")
  args = p.parse_args()
  use_clock(args.clock)
  if args.tokens % args.seq:
    p.error(f"--tokens={args.tokens} must be a multiple of --seq={args.seq}")
  if args.info:
    import flax
    print(json.dumps(dict(machine_info(), devices=str(jax.devices()), flax=flax.__version__,
                          python=platform.python_version(), clock=args.clock,
                          xla_flags=os.environ.get("XLA_FLAGS", ""))), flush=True)
  dense = dense_equiv_fn(args.top_k)
  dense_args = dense_equiv_args(args.tokens, args.d_model, args.d_ff, args.top_k)
  _timed(dense, *dense_args)
  for e in [int(v) for v in args.experts.split(",")]:
    for name in args.backends.split(","):
      if name not in BACKENDS:
        p.error(f"--backends: unknown {name!r}; choose from {sorted(BACKENDS)}")
      print(json.dumps(run_one(name, e, args, dense, dense_args)), flush=True)


if __name__ == "__main__":
  main()
