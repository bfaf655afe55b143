"""Sharded training equals one device, through the Trainer's own jitted step (sharding.on_mesh,
the expert-parallel shard_map dispatch, the batch and embedding constraints, donation): several
steps at a non-zero learning rate on meshes that shard experts, fsdp and tensor.

Tolerances are per tensor, relative to its largest value (helpers.assert_tree_close): float
reassociation across layouts stays near 1e-6 of that scale. Adam's moments after the steps carry
the gradients themselves (mu = sum of (1 - b1) b1^k g, nu likewise for g^2), so a 1% error in any
parameter's gradient moves its moments by 1% and fails; the parameters alone would not show it,
since Adam divides each update by the gradient's own size.
"""
import jax
import numpy as np
import pytest

from conftest import load_config
from helpers import assert_tree_close, build, packed_batch
from medmoe_jax import config as cfg_lib
from medmoe_jax import sharding
from medmoe_jax.training import optim

STEPS = 3


def _config(mesh):
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=512, d_model=64, num_layers=4, num_heads=4, num_kv_heads=2,
                      d_ff=128))
  c.data.update(dict(seq_len=32, batch_size=8))
  c.moe.num_experts = 8  # 7 family experts + 1 unforced, so experts shard over 4 / 2
  # Warm-up of one step: the first step runs at lr 0, the next two at lr ~3e-3.
  c.train.update(dict(steps=10, warmup_frac=0.1, lr=3e-3))
  c.mesh.update(dict(data=1, fsdp=1, expert=1, tensor=1))
  c.mesh.update(mesh)
  return c


def _train(mesh_shape):
  c = _config(mesh_shape)
  devices = jax.devices()[: int(np.prod(list(c.mesh.values())))]
  cfg_lib.validate(c, len(devices))
  _, state, step, mesh = build(c, mesh=sharding.make_mesh(c, devices))
  losses, norms = [], []
  for i in range(STEPS):
    state, metrics = step(state, sharding.global_batch(packed_batch(seed=i), mesh),
                          jax.random.key(0))
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  wo = state.params["segments"][1]["blocks"]["ffn"]["wo"].sharding.spec
  return dict(losses=losses, norms=norms, params=jax.device_get(state.params),
              opt_state=jax.device_get(state.opt_state), wo_spec=wo)


@pytest.fixture(scope="module")
def single_device():
  return _train(dict(data=1))


def test_learning_rate_is_non_zero_after_the_first_step():
  lr = optim.lr_schedule(_config({}).train)
  assert float(lr(0)) == 0.0 and float(lr(1)) == pytest.approx(3e-3) and float(lr(2)) > 2.9e-3


@pytest.mark.parametrize("mesh", [dict(data=2, expert=4), dict(data=2, fsdp=2, expert=2),
                                  dict(data=2, tensor=2, expert=2)])
def test_sharded_train_steps_equal_single_device(single_device, mesh):
  ref, got = single_device, _train(mesh)
  np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
  np.testing.assert_allclose(got["norms"], ref["norms"], rtol=1e-5)
  assert_tree_close(got["opt_state"], ref["opt_state"], rel=1e-4, what=f"{mesh} opt_state")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), got["params"],
               ref["params"])
  assert got["wo_spec"][1] == "expert"
