"""Where MoE dispatch runs: on the local tokens of each device, inside shard_map.

The model reads the mesh only from the tracing context (`jax.set_mesh(mesh)`, entered by the
trainer around its jitted step); it never sees config or files. With a mesh of more than one
device the dispatch runs per device in `jax.shard_map`:
  - the batch is split over the batch axes (data, fsdp, expert), so each device sorts / buckets
    only its own tokens (a global sort under the automatic partitioner would gather the batch);
  - expert weights are split over `expert` (and their FFN width over `tensor`); fsdp-sharded
    weights are all-gathered on entry by shard_map's input specs and their gradients
    reduce-scattered back by its transpose;
  - the dispatch function exchanges tokens over the `expert` axis (all-to-all for capacity,
    all-gather + reduce-scatter for dense and dropless), and partial sums over `tensor` are
    added with a psum.
Router math (losses, statistics) stays outside, on the whole batch, so it is identical on every
mesh. Without a mesh (or on one device) the dispatch runs as plain code.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from medmoe_jax.model import axis_rules


class ExpertAxis(NamedTuple):
  """The mesh axis that shards the experts, as seen inside shard_map."""
  name: str
  size: int


def dispatch(fn, x, indices, weights, valid, experts, check_vma: bool = True):
  """fn(x, indices, weights, valid, experts, ep=) -> (y, kept, routed) on local tokens.
  x: [B, S, D]; indices, weights: [B, S, k]; valid: [B, S]; experts: (wi_gate [E, D, F],
  wi_up [E, D, F], wo [E, F, D]). Returns (y [B, S, D], dropped_fraction float32).
  check_vma=False runs shard_map without its varying-axes types, for kernels that cannot
  declare them (megablox's pallas_call); its transpose then adds the gradient sums itself."""
  mesh = axis_rules.current_mesh()
  sizes = dict(mesh.shape) if mesh is not None else {}
  # Only the mesh axes that really split (size > 1) enter the specs and the collectives.
  batch = axis_rules.split_axes("batch", mesh)
  wspec_in = axis_rules.activation_spec(("expert", None, "mlp"), mesh, split_only=True)
  wspec_out = axis_rules.activation_spec(("expert", "mlp", None), mesh, split_only=True)
  ex, _, tp = wspec_in
  num_experts, d_ff = experts[0].shape[0], experts[0].shape[-1]
  if ex and num_experts % sizes[ex]:
    raise ValueError(f"{num_experts} experts cannot be split over the mesh axis "
                     f"{ex}={sizes[ex]}; use a divisor of {num_experts} (config.mesh.expert)")
  even = (x.shape[0] % math.prod(sizes[a] for a in batch) == 0
          and (tp is None or d_ff % sizes[tp] == 0))
  if not (batch or tp) or not even:
    # No mesh, one device, or shapes that do not split evenly (e.g. an eval batch smaller than
    # the data axes): plain code, partitioned by XLA.
    y, kept, routed = fn(x, indices, weights, valid, experts, ep=None)
    return y, _dropped(kept, routed)

  bspec = P(batch) if batch else P()
  ep = ExpertAxis(ex, sizes[ex]) if ex else None

  def local(x, indices, weights, valid, experts):
    y, kept, routed = fn(x, indices, weights, valid, experts, ep=ep)
    if tp:
      y = lax.psum(y, tp)  # each tensor shard holds a slice of d_ff: partial sums
    if batch:
      kept, routed = lax.psum(kept, batch), lax.psum(routed, batch)
    return y, kept, routed

  y, kept, routed = jax.shard_map(
      local, mesh=mesh, check_vma=check_vma,
      in_specs=(bspec, bspec, bspec, bspec, (wspec_in, wspec_in, wspec_out)),
      out_specs=(bspec, P(), P()))(x, indices, weights, valid, tuple(experts))
  return y, _dropped(kept, routed)


def _dropped(kept, routed):
  return (1.0 - kept / jnp.maximum(routed, 1)).astype(jnp.float32)
