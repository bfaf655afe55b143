"""Logical axis names -> mesh axes: the one table, for parameters and activations alike.

The model names the dimensions of its parameters ("embed", "mlp", ...) and of the activations it
pins ("batch", ...) logically; `RULES` says which mesh axes split each name. Parameters resolve
through it in `medmoe_jax.sharding.state_shardings`; activations resolve through it inside the
model (`layers.constrain_batch`, `layers.embed_lookup`, `expert_parallel.dispatch`) against the
mesh of the tracing context. A name without a rule is an error, never a silent replication.
"""
from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

from medmoe_jax.model.spec import BATCH_MESH_AXES, EXPERT_AXIS, TENSOR_AXIS

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
RULES = (
    # Parameters.
    ("vocab", TENSOR_AXIS),
    ("embed", "fsdp"),
    ("mlp", TENSOR_AXIS),
    ("heads", TENSOR_AXIS),
    ("kv_heads", TENSOR_AXIS),
    ("head_dim", None),
    ("expert", EXPERT_AXIS),
    ("layers", None),
    # Activations.
    ("batch", BATCH_MESH_AXES),
    ("length", None),
    # The embedding lookup's output [B, S, D] as the FSDP table gives it: D split as the table's
    # "embed", so the batch only over the batch axes "embed" leaves free.
    ("lookup_batch", tuple(a for a in BATCH_MESH_AXES if a != "fsdp")),
)


class UnknownLogicalAxis(ValueError):
  """A logical axis name that `RULES` does not map."""


def mesh_axes(name: str, rules=RULES) -> tuple[str, ...]:
  """The mesh axes that split logical axis `name`, in order (() = replicated)."""
  table = dict(rules)
  if name not in table:
    raise UnknownLogicalAxis(
        f"logical axis {name!r} has no sharding rule; known: {', '.join(table)} "
        "(add it to medmoe_jax/model/axis_rules.py RULES)")
  axis = table[name]
  return (axis,) if isinstance(axis, str) else tuple(axis or ())


def logical_to_mesh(names, rules=RULES, keep=None) -> P:
  """A PartitionSpec of logical names (None = replicated) -> the PartitionSpec of mesh axes.
  A mesh axis may appear once per spec; later repeats stay replicated. `keep(axis)` (default:
  all) drops the mesh axes it rejects."""
  out, used = [], set()
  for name in names:
    axes = mesh_axes(name, rules) if name is not None else ()
    axes = tuple(a for a in axes if a not in used and (keep is None or keep(a)))
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def current_mesh():
  """The abstract mesh of the tracing context (sharding.on_mesh, jax.set_mesh), or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def activation_spec(names, mesh, *, split_only: bool = False) -> P:
  """Logical `names` resolved on `mesh` (None: no mesh): mesh axes the mesh lacks are dropped,
  and with `split_only` those of size 1 too (shard_map specs that name only real splits)."""
  sizes = dict(mesh.shape) if mesh is not None else {}
  if split_only:
    return logical_to_mesh(names, keep=lambda a: sizes.get(a, 1) > 1)
  return logical_to_mesh(names, keep=lambda a: a in sizes)


def split_axes(name: str, mesh) -> tuple[str, ...]:
  """The mesh axes of size > 1 that split logical axis `name` on `mesh` (None: no mesh)."""
  sizes = dict(mesh.shape) if mesh is not None else {}
  return tuple(a for a in mesh_axes(name) if sizes.get(a, 1) > 1)


def constrain(x, names):
  """x pinned to the logical `names` (one per dim) on the tracing context's mesh; x as it is
  without one (tests, evaluation on one device)."""
  mesh = current_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, activation_spec(names, mesh))
