"""axis_rules: the one table from logical axis names to mesh axes, for parameters and activations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

from medmoe_jax import sharding
from medmoe_jax.model import axis_rules, layers
from medmoe_jax.model.spec import MESH_AXES

# Every mesh axis, the tensor axis of size 1.
FULL = AbstractMesh((2, 2, 2, 1), MESH_AXES)
# A mesh without fsdp and expert (as a user-built mesh may be).
DATA_TENSOR = AbstractMesh((4, 2), ("data", "tensor"))


@pytest.mark.parametrize("mesh, split_only, expected", [
    (FULL, False, dict(batch=("data", "fsdp", "expert"), lookup_batch=("data", "expert"),
                       embed="fsdp", vocab="tensor", mlp="tensor", heads="tensor",
                       kv_heads="tensor", expert="expert", head_dim=None, layers=None, length=None)),
    # split_only: tensor (size 1) splits nothing.
    (FULL, True, dict(batch=("data", "fsdp", "expert"), lookup_batch=("data", "expert"),
                      embed="fsdp", vocab=None, mlp=None, heads=None, kv_heads=None,
                      expert="expert", head_dim=None, layers=None, length=None)),
    (DATA_TENSOR, False, dict(batch="data", lookup_batch="data", embed=None, vocab="tensor",
                              mlp="tensor", heads="tensor", kv_heads="tensor", expert=None,
                              head_dim=None, layers=None, length=None)),
])
def test_each_logical_name_resolves_on_the_mesh(mesh, split_only, expected):
  assert set(expected) == set(dict(axis_rules.RULES))  # every rule is checked
  for name, axes in expected.items():
    assert axis_rules.activation_spec((name,), mesh, split_only=split_only) == P(axes), name


def test_a_mesh_axis_splits_one_dimension_only():
  # The batch takes fsdp, so the embed dim after it stays replicated.
  assert axis_rules.activation_spec(("batch", "length", "embed"), FULL) == P(
      ("data", "fsdp", "expert"), None, None)
  assert axis_rules.activation_spec(("lookup_batch", "length", "embed"), FULL) == P(
      ("data", "expert"), None, "fsdp")
  # Parameters: no mesh to filter by.
  assert axis_rules.logical_to_mesh(("expert", "embed", "mlp")) == P("expert", "fsdp", "tensor")


def test_split_axes_of_the_expert_dispatch():
  assert axis_rules.split_axes("batch", FULL) == ("data", "fsdp", "expert")
  assert axis_rules.split_axes("batch", AbstractMesh((1, 1, 8, 1), MESH_AXES)) == ("expert",)
  assert axis_rules.split_axes("batch", None) == ()


def test_unknown_logical_name_is_a_clear_error():
  with pytest.raises(axis_rules.UnknownLogicalAxis,
                     match=r"logical axis 'sequence' has no sharding rule; known: vocab, embed"):
    axis_rules.activation_spec(("batch", "sequence"), FULL)
  # The parameter path (sharding.state_shardings) refuses it too, instead of replicating.
  with pytest.raises(axis_rules.UnknownLogicalAxis, match="'hidden'"):
    sharding.state_shardings(nnx.State({"w": nnx.Param(jnp.zeros((4, 4)), out_sharding=("embed", "hidden"))}),
                             Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1, 1), MESH_AXES))
  # Inside the model, under a mesh.
  with jax.set_mesh(Mesh(np.asarray(jax.devices()).reshape(2, 2, 2, 1), MESH_AXES)):
    with pytest.raises(axis_rules.UnknownLogicalAxis, match="'sequence'"):
      jax.eval_shape(lambda x: axis_rules.constrain(x, ("batch", "sequence")), jnp.zeros((8, 4)))


def test_constrain_batch_pins_the_batch_axes_of_the_table():
  x = jnp.arange(8 * 4 * 2, dtype=jnp.float32).reshape(8, 4, 2)
  assert layers.constrain_batch(x) is x  # no mesh: unchanged
  mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2, 2, 1), MESH_AXES)
  with jax.set_mesh(mesh):
    y = jax.jit(layers.constrain_batch)(x)
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp", "expert"), None, None)), 3)
  assert y.sharding.shard_shape(x.shape) == (1, 4, 2)
  np.testing.assert_array_equal(y, x)
