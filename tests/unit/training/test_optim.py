"""The optimizer by value: which parameters weight decay shrinks, the learning-rate schedule,
global-norm clipping (trainable gradients only), on a real model's parameter tree."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax.training import optim
from method_runs import random_params


def _train_cfg(**kw):
  c = load_config("post_moe")
  c.train.update(dict(steps=10, warmup_frac=0.1, lr=1e-2, weight_decay=0.1, grad_clip=1.0))
  c.train.update(kw)
  return c.train


def _params():
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=64, d_model=8, num_layers=2, num_heads=2, num_kv_heads=1,
                      d_ff=8))
  c.moe.update(dict(layers="last:1", num_experts=3, shared_expert_d_ff=0))
  return jax.tree.map(jnp.asarray, random_params(cfg_lib.model_spec(c), seed=0))


def _adam(opt_state):
  """The ScaleByAdamState (mu, nu, count) inside the trainable branch."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1
  return found[0]


def _paths(tree):
  return {optim.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _first_update_state(tx, grads, params):
  """The optimizer state after one update of `grads` from tx.init(params), in one program."""
  return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[1])(grads, params)


def test_lr_schedule_values():
  lr = optim.lr_schedule(_train_cfg(steps=100, warmup_frac=0.1, lr=1e-3, min_lr_ratio=0.1))
  # Linear warm-up from 0 over 10 steps, then cosine from 1e-3 to 1e-4 over the other 90.
  for step, want in [(0, 0.0), (5, 5e-4), (10, 1e-3), (55, 1e-4 + 9e-4 * 0.5),
                     (32.5, 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 0.25))), (100, 1e-4),
                     (150, 1e-4)]:
    assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step
  # Warm-up length rounds warmup_frac * steps and is at least one step.
  assert float(optim.lr_schedule(_train_cfg(steps=300, warmup_frac=0.03, lr=1.0))(3)) == \
      pytest.approx(3 / 9)
  assert float(optim.lr_schedule(_train_cfg(steps=300, warmup_frac=0.0, lr=1.0))(1)) == \
      pytest.approx(1.0, rel=1e-4)


def test_weight_decay_shrinks_matrices_not_norms_or_biases():
  """Zero gradients: Adam's step is 0, so the second update (lr 1e-2; the first runs at lr 0) is
  weight decay alone: p -> p (1 - lr wd) for every matrix (embeddings, attention, dense and
  expert FFNs, routers), p unchanged for norm scales and biases."""
  params = _params()
  tx, _ = optim.make_optimizer(_train_cfg(), params, [], verbose=False)
  zeros = jax.tree.map(jnp.zeros_like, params)

  @jax.jit  # one program, not every op of every update compiled eagerly
  def two_updates(p):
    state = tx.init(p)
    for _ in range(2):
      updates, state = tx.update(zeros, state, p)
      p = optax.apply_updates(p, updates)
    return p

  p = two_updates(params)
  before, after = _paths(params), _paths(p)
  kept = sorted(k for k in before if np.array_equal(np.asarray(after[k]), np.asarray(before[k])))
  decayed = sorted(k for k in before if k not in kept)
  assert kept and all(k.endswith(("scale", "bias")) for k in kept)
  assert any(k.endswith("q_proj/bias") for k in kept) and any("final_norm" in k for k in kept)
  assert {k.rsplit("/", 1)[-1] for k in decayed} >= {"embedding", "kernel", "router", "wi_gate",
                                                     "wi_up", "wo"}
  for k in decayed:
    np.testing.assert_allclose(after[k], before[k] * (1 - 1e-2 * 0.1), rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_clipping_scales_gradients_to_the_global_norm(clip):
  """Adam's first moment after one update is (1 - b1) g_clipped: g scaled by clip / |g| when
  |g| > clip, untouched without clipping."""
  params = _params()
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  norm = float(optax.tree.norm(grads))
  assert norm > 10
  tx, _ = optim.make_optimizer(_train_cfg(grad_clip=clip), params, [], verbose=False)
  state = _first_update_state(tx, grads, params)
  scale = clip / norm if clip else 1.0
  for k, mu in _paths(_adam(state).mu).items():
    np.testing.assert_allclose(mu, 0.1 * 0.5 * scale, rtol=1e-5, err_msg=k)


def test_clipping_sees_only_trainable_gradients():
  """A frozen expert's gradient slice and frozen parameters do not count toward the global norm:
  the norm that clips is the trainable gradients' alone."""
  params = _params()
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  flat = _paths(grads)
  expert_key = next(k for k in flat if k.endswith("ffn/wi_gate") and flat[k].ndim == 4)
  # Expert 0's slice gets a huge gradient; it is frozen, so it must not shrink the others.
  grads_big = jax.tree_util.tree_map_with_path(
      lambda path, g: g.at[:, 0].set(1e4) if optim.path_str(path) == expert_key else g, grads)
  tx, labels = optim.make_optimizer(_train_cfg(freeze="embed", freeze_experts="0"), params, [
      "embed"], verbose=False)
  state = _first_update_state(tx, grads_big, params)
  trainable = [(k, g) for (k, g), lab in zip(flat.items(), jax.tree.leaves(labels))
               if lab == optim.TRAINABLE]
  experts = [k for k, _ in trainable if k.endswith(("ffn/wi_gate", "ffn/wi_up", "ffn/wo"))]
  assert len(experts) == 3 and all(flat[k].ndim == 4 for k in experts)  # [layers, E, ., .]
  sq = sum(float(np.sum(np.asarray(g) ** 2)) for _, g in trainable)
  sq -= sum(float(np.sum(np.asarray(flat[k])[:, 0] ** 2)) for k in experts)  # frozen slices
  scale = 1.0 / math.sqrt(sq)
  mu = _paths(_adam(state).mu)
  assert not any(k.startswith("embed") for k in mu if not isinstance(mu[k], optax.MaskedNode))
  np.testing.assert_allclose(np.asarray(mu[expert_key])[:, 1:], 0.05 * scale, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(mu[expert_key])[:, 0], 0.0)
  other = next(k for k in mu if k.endswith("final_norm/scale"))
  np.testing.assert_allclose(mu[other], 0.05 * scale, rtol=1e-5)
