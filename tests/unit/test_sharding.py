"""sharding.optimizer_shardings: every optimizer moment is sharded like its parameter."""
import jax
from flax import nnx

from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax import sharding
from medmoe_jax.model import Transformer
from medmoe_jax.training import optim


def test_optimizer_state_shardings_follow_the_parameters(tiny_config):
  c = tiny_config
  c.mesh.update(dict(data=2, fsdp=2, expert=1, tensor=2))
  c.train.freeze_experts = "0"
  mesh = sharding.make_mesh(c)
  spec = cfg_lib.model_spec(c)
  _, aparams = nnx.split(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))), nnx.Param)
  pshard = sharding.state_shardings(aparams, mesh)
  params = nnx.to_pure_dict(aparams)
  tx, _ = optim.make_optimizer(cfg_lib.train_spec(c), params, [], verbose=False)
  opt = sharding.optimizer_shardings(tx.init, params, pshard, mesh)
  flat_p = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(pshard)}
  moments = 0
  for path, s in jax.tree_util.tree_leaves_with_path(opt):
    key = jax.tree_util.keystr(path)
    own = [v for k, v in flat_p.items() if key.endswith(k)]
    if own:  # a moment: its parameter's sharding
      moments += 1
      assert s.spec == own[0].spec, key
    else:  # a step count
      assert s.spec == jax.sharding.PartitionSpec(), key
  assert moments == 2 * len(flat_p)  # Adam's mu and nu for every parameter
  assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(opt))
