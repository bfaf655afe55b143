"""The mesh, and the shardings of what the step takes and returns: parameters (through the
logical axis rules of `model/axis_rules.py`, the one table activations use too), optimizer
state (derived from the parameters'), batches.

Mesh axes: data (pure data parallel), fsdp (data parallel + parameter sharding over `embed`),
expert (experts' weights sharded; the batch is sharded over it too), tensor (heads / FFN width).
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medmoe_jax.config import MESH_AXES, mesh_shape
from medmoe_jax.model.axis_rules import RULES, logical_to_mesh
from medmoe_jax.model.spec import BATCH_MESH_AXES

BATCH_AXES = BATCH_MESH_AXES  # the mesh axes of logical "batch"


def make_mesh(config, devices=None) -> Mesh:
  """The mesh of config.mesh over `devices` (default: all)."""
  devices = list(devices if devices is not None else jax.devices())
  return mesh_of_shape(mesh_shape(config, len(devices)), devices)


def mesh_of_shape(shape: dict, devices=None) -> Mesh:
  """The mesh of a resolved shape (axis -> size, covering `devices`, default all)."""
  devices = list(devices if devices is not None else jax.devices())
  dims = tuple(shape[a] for a in MESH_AXES)
  try:
    dev_array = jax.experimental.mesh_utils.create_device_mesh(dims, devices=devices)
  except Exception:  # non-TPU topologies / fake CPU devices: plain reshape is fine
    dev_array = np.asarray(devices).reshape(dims)
  return Mesh(dev_array, MESH_AXES)


def _fit_to_shape(pspec: P, shape, mesh: Mesh) -> P:
  """Drop mesh axes that do not divide the dimension (e.g. 2 kv heads on tensor=4)."""
  out = []
  for dim, axes in zip(shape, tuple(pspec) + (None,) * (len(shape) - len(pspec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    out.append(axes if dim % size == 0 else None)
  return P(*out)


def state_shardings(abstract_state, mesh: Mesh, rules=RULES):
  """nnx.State of abstract Variables (with logical `out_sharding` metadata) -> NamedShardings."""
  pspecs = nnx.get_partition_spec(abstract_state)

  def to_sharding(var_spec, var):
    return NamedSharding(mesh, _fit_to_shape(logical_to_mesh(var_spec, rules), var.shape, mesh))

  return jax.tree.map(to_sharding, nnx.to_pure_dict(pspecs), nnx.to_pure_dict(abstract_state))


def optimizer_shardings(tx_init, abstract_params, param_shardings, mesh: Mesh):
  """The optimizer state's shardings, derived from the parameters': `tx_init` is traced
  (jax.eval_shape, nothing computed) on parameters that carry their shardings on an explicit
  copy of the mesh, so every moment comes out sharded like the parameter it was made from.
  Leaves not made from a parameter (step counts) are replicated."""
  explicit = jax.sharding.AbstractMesh(
      tuple(mesh.shape.values()), tuple(mesh.axis_names),
      axis_types=(jax.sharding.AxisType.Explicit,) * len(mesh.axis_names))
  args = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(explicit, s.spec)),
      abstract_params, param_shardings)
  with jax.sharding.use_abstract_mesh(explicit):
    state = jax.eval_shape(tx_init, args)
  repl = replicated(mesh)
  return jax.tree.map(
      lambda x: NamedSharding(mesh, x.sharding.spec) if getattr(x, "sharding", None) else repl,
      state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches [B, S]: B over the data-parallel axes, S replicated."""
  return NamedSharding(mesh, logical_to_mesh(("batch", "length")))


def on_mesh(fn, mesh: Mesh):
  """fn traced with `mesh` as the ambient mesh, so the model's activation constraints
  (layers.constrain_batch) apply. Wrap a step before jax.jit."""
  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return wrapped


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
