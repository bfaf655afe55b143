"""A checkpoint written on one mesh restores onto another with identical values and the new
mesh's shardings (Checkpointer.restore reads into the target's abstract state)."""
import logging

import jax
import numpy as np
import optax

from conftest import load_config
from helpers import packed_batch
from medmoe_jax import sharding
from medmoe_jax.checkpoint import Checkpointer
from medmoe_jax.train import Trainer


def _trainer(mesh):
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=512, d_model=64, num_heads=4, num_kv_heads=2, d_ff=128))
  c.moe.num_experts = 8  # 7 family experts + 1 spare, so an expert axis of 4 divides them
  c.mesh.update(mesh)
  return Trainer(c, workdir="").setup_step()


def _leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


def test_data8_checkpoint_restores_onto_data2_expert4(tmp_path):
  src = _trainer(dict(data=8, fsdp=1, expert=1, tensor=1))
  state = src._init_state()
  for i in range(2):  # real steps (the second at lr > 0): Adam's moments hold gradients, not 0
    state, _ = src.train_step(state, sharding.global_batch(packed_batch(seed=i), src.mesh),
                              jax.random.key(0))
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)][0]
  assert int(adam.count) == 2
  for moment in jax.tree.leaves((adam.mu, adam.nu)):
    assert float(jax.numpy.max(jax.numpy.abs(moment))) > 0
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ckpt.save(7, state, {"next": 3})
  ckpt.close()

  dst = _trainer(dict(data=2, fsdp=1, expert=4, tensor=1))
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  restored, data_state, step = ckpt.restore(dst.abstract_state)
  ckpt.close()
  assert (step, data_state) == (7, {"next": 3})
  assert int(restored.step) == int(state.step) == 2

  want = jax.device_get(state)
  got = jax.device_get(restored)
  for (path, a), (_, b) in zip(_leaves(want.params) + _leaves(want.opt_state),
                               _leaves(got.params) + _leaves(got.opt_state)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))

  # Laid out for the new mesh: expert weights split over its expert axis, 2 experts a device.
  wi = restored.params["segments"][1]["blocks"]["ffn"]["wi_gate"]
  assert wi.sharding.mesh.shape == {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
  assert "expert" in str(wi.sharding.spec)
  assert wi.addressable_shards[0].data.shape[1] == 8 // 4
  assert jax.tree.map(lambda x: x.sharding, restored) == dst.state_shardings


def test_read_only_reader_does_not_warn_about_being_read_only(tmp_path, caplog):
  """Evaluation opens a training workdir read-only on purpose; Orbax's 'Given directory is read
  only' WARNING is dropped, and only that one: the filter is gone once the manager exists."""
  Checkpointer(str(tmp_path / "ckpt"), async_save=False).close()
  with caplog.at_level(logging.WARNING, logger="absl"):
    reader = Checkpointer(str(tmp_path / "ckpt"), read_only=True)
    logging.getLogger("absl").warning("Given directory is read only=after")
  assert reader.all_steps() == []
  reader.close()
  messages = [r.getMessage() for r in caplog.records]
  assert messages == ["Given directory is read only=after"], messages
