"""Shared test utilities: synthetic packed batches and a model/state builder."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medmoe_jax import config as cfg_lib
from medmoe_jax import sharding
from medmoe_jax.model import Transformer
from medmoe_jax.training import optim, step as step_lib


def packed_batch(batch=8, seq=32, vocab=512, num_langs=20, seed=0):
  """Two documents per row plus 3 padding tokens, one language per document."""
  r = np.random.RandomState(seed)
  half = seq // 2
  seg = np.ones((batch, seq), np.int32)
  seg[:, half:] = 2
  seg[:, -3:] = 0
  pos = np.concatenate([np.arange(half), np.arange(seq - half)])[None].repeat(batch, 0).astype(np.int32)
  lang = np.where(seg == 1, r.randint(0, num_langs, (batch, 1)), r.randint(0, num_langs, (batch, 1)))
  lang = np.where(seg == 0, -1, lang).astype(np.int32)
  return dict(tokens=r.randint(4, vocab, (batch, seq)).astype(np.int32), segment_ids=seg,
              positions=pos, lang_ids=lang, loss_mask=(seg > 0).astype(np.int32))


def build(c, mesh=None, seed=0):
  """(graphdef, state, jitted train_step, mesh) for config c on a mesh from c.mesh."""
  spec = cfg_lib.model_spec(c)
  mesh = mesh or sharding.make_mesh(c)
  abstract = nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(seed)))
  graphdef, aparams = nnx.split(abstract, nnx.Param)
  pshard = sharding.state_shardings(aparams, mesh)
  tx, _ = optim.make_optimizer(c.train, nnx.to_pure_dict(aparams), [])

  def init():
    model = Transformer(spec, rngs=nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  repl = sharding.replicated(mesh)
  opt_shard = jax.tree.map(lambda _: repl, jax.eval_shape(init).opt_state)
  state = jax.jit(init, out_shardings=step_lib.TrainState(repl, pshard, opt_shard))()
  weights = step_lib.LossWeights(c.moe.lb_loss_weight, c.moe.z_loss_weight, c.moe.lpr_loss_weight)
  train_step = jax.jit(step_lib.make_train_step(graphdef, tx, weights, len(cfg_lib.language_list(c))))
  return graphdef, state, train_step, mesh
