"""Checkpoint retention: config.train.keep_checkpoints keeps the newest N finished steps."""
import jax.numpy as jnp
import numpy as np
import pytest

from medmoe_jax.checkpoint import Checkpointer
from medmoe_jax.training.step import TrainState


def _state(step):
  return TrainState(jnp.asarray(step, jnp.int32), {"w": jnp.full((2,), float(step))}, {})


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_retains_the_newest_steps(tmp_path, keep):
  ck = Checkpointer(str(tmp_path), keep=keep, async_save=False)
  for step in (10, 20, 30, 40, 50):
    assert ck.save(step, _state(step), {"pos": step})
  assert ck.all_steps() == [10, 20, 30, 40, 50][-keep:]
  assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == \
      [10, 20, 30, 40, 50][-keep:]
  state, data, step = ck.restore(_state(0))
  ck.close()
  assert step == 50 and data == {"pos": 50}
  np.testing.assert_array_equal(state.params["w"], [50.0, 50.0])
