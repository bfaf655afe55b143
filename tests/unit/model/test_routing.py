"""Routing math by value: top-k, language priors, losses, jitter, statistics, padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medmoe_jax.model import routing

PROBS = np.asarray([[0.5, 0.3, 0.1, 0.05, 0.05],
                    [0.1, 0.2, 0.6, 0.05, 0.05],
                    [0.05, 0.05, 0.1, 0.3, 0.5]], np.float32)
LOGITS = jnp.log(jnp.asarray(PROBS))


def test_top_k_without_and_with_renormalisation():
  r = routing.route(LOGITS, top_k=2, norm_topk=False, mode="none")
  np.testing.assert_array_equal(r.indices, [[0, 1], [2, 1], [4, 3]])
  # Apollo-MoE: softmax over all experts, then top-k, no renormalisation.
  np.testing.assert_allclose(r.weights, [[0.5, 0.3], [0.6, 0.2], [0.5, 0.3]], rtol=1e-5)
  np.testing.assert_allclose(r.probs, PROBS, rtol=1e-5)
  n = routing.route(LOGITS, top_k=2, norm_topk=True, mode="none")
  np.testing.assert_allclose(n.weights, [[0.625, 0.375], [0.75, 0.25], [0.625, 0.375]], rtol=1e-5)


def test_hybrid_forcing_is_training_only_and_replaces_the_last_choice():
  forced = jnp.asarray([4, 2, -1])  # outside top-2 / already first / no language
  r = routing.route(LOGITS, top_k=2, norm_topk=False, mode="hybrid", forced=forced, train=True)
  np.testing.assert_array_equal(r.indices, [[0, 4], [2, 1], [4, 3]])
  np.testing.assert_allclose(r.weights, [[0.5, 0.05], [0.6, 0.2], [0.5, 0.3]], rtol=1e-5)
  ev = routing.route(LOGITS, top_k=2, norm_topk=False, mode="hybrid", forced=forced, train=False)
  np.testing.assert_array_equal(ev.indices, [[0, 1], [2, 1], [4, 3]])
  # top-1: the forced expert replaces the only choice, weight from the full softmax.
  one = routing.route(LOGITS, top_k=1, norm_topk=False, mode="hybrid", forced=forced, train=True)
  np.testing.assert_array_equal(one.indices, [[4], [2], [4]])
  np.testing.assert_allclose(one.weights, [[0.05], [0.6], [0.5]], rtol=1e-5)
  # norm_topk renormalises the final set (exactly 1 at top-1).
  n1 = routing.route(LOGITS, top_k=1, norm_topk=True, mode="hybrid", forced=forced, train=True)
  np.testing.assert_allclose(n1.weights, [[1.0], [1.0], [1.0]], rtol=1e-6)


def test_hard_routing_top1_weight_one_with_router_fallback():
  r = routing.route(LOGITS, top_k=2, norm_topk=False, mode="hard", forced=jnp.asarray([3, 0, -1]))
  np.testing.assert_array_equal(r.indices, [[3], [0], [4]])  # -1: the router's argmax
  np.testing.assert_array_equal(r.weights, [[1.0], [1.0], [1.0]])
  with pytest.raises(ValueError, match="hard"):
    routing.route(LOGITS, top_k=2, norm_topk=False, mode="hard")
  with pytest.raises(ValueError, match="soft"):
    routing.route(LOGITS, top_k=2, norm_topk=False, mode="soft")


def test_load_balance_loss_values():
  probs = jnp.asarray([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.0, 1.0]])
  idx = jnp.asarray([[0], [0], [1], [0], [1]])
  mask = jnp.asarray([1, 1, 1, 1, 0])  # the last token is padding
  # f = (3/4, 1/4), P = (0.65, 0.35): 2 * (0.75*0.65 + 0.25*0.35) = 1.15
  np.testing.assert_allclose(routing.load_balance_loss(probs, idx, mask), 1.15, rtol=1e-6)
  # A perfectly balanced top-2 router scores 1 (slots are divided by k).
  uniform = jnp.full((4, 4), 0.25)
  idx2 = jnp.asarray([[0, 1], [2, 3], [1, 0], [3, 2]])
  np.testing.assert_allclose(routing.load_balance_loss(uniform, idx2, jnp.ones(4)), 1.0, rtol=1e-6)
  # The gradient flows through the mean probabilities only: d/dP_e = E * f_e / n.
  g = jax.grad(lambda p: routing.load_balance_loss(p, idx, mask))(probs)
  np.testing.assert_allclose(g[:4], np.tile([2 * 0.75 / 4, 2 * 0.25 / 4], (4, 1)), rtol=1e-6)
  np.testing.assert_array_equal(g[4], [0.0, 0.0])


def test_z_loss_value_ignores_padding():
  logits = jnp.asarray([[0.0, 0.0], [1.0, 1.0], [100.0, -100.0]])
  mask = jnp.asarray([1, 1, 0])
  want = (np.log(2) ** 2 + (1 + np.log(2)) ** 2) / 2
  np.testing.assert_allclose(routing.z_loss(logits, mask), want, rtol=1e-6)


def test_lpr_loss_value_and_exact_gradient_for_tiny_probabilities():
  logits = jnp.asarray([[2.0, 0.0, 0.0], [-60.0, 0.0, 0.0], [5.0, 1.0, 0.0], [0.0, 9.0, 0.0]])
  original = jnp.asarray([1.0, 1.0, 0.0, 1.0])  # token 2 is a new-language token
  lsm = jax.nn.log_softmax(logits)
  want = -(lsm[0, 0] + lsm[1, 0] + lsm[3, 0]) / 3
  np.testing.assert_allclose(routing.lpr_loss(logits, original), want, rtol=1e-6)
  assert float(routing.lpr_loss(logits, original)) > 20  # p(expert 0) ~ 1e-26 is not clipped
  g = jax.grad(routing.lpr_loss)(logits, original)
  # d(-log softmax_0)/dlogits = softmax - onehot(0), averaged over the 3 original tokens.
  expect = (jax.nn.softmax(logits) - jnp.asarray([1.0, 0, 0])) * original[:, None] / 3
  np.testing.assert_allclose(g, expect, atol=1e-7)
  np.testing.assert_array_equal(g[2], [0.0, 0.0, 0.0])


def test_jitter_is_multiplicative_bounded_and_optional():
  x = jnp.ones((64, 8))
  assert routing.jitter_logits_input(x, None, 0.1) is x
  assert routing.jitter_logits_input(x, jax.random.key(0), 0.0) is x
  j = routing.jitter_logits_input(x, jax.random.key(0), 0.1)
  assert 0.9 <= float(j.min()) < 0.92 and 1.08 < float(j.max()) <= 1.1
  k = routing.jitter_logits_input(x, jax.random.key(1), 0.1)
  assert float(jnp.abs(j - k).max()) > 0.01


def test_router_stats_values_and_padding():
  probs = jnp.asarray([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5]])
  idx = jnp.asarray([[0, 1], [1, 2], [2, 0], [2, 1]])
  mask = jnp.asarray([1, 1, 1, 0])
  forced = jnp.asarray([1, 0, 2, 2])
  lang = jnp.asarray([0, 1, 0, 1])
  s = routing.router_stats(probs, idx, mask, forced, num_langs=2, lang_ids=lang)
  np.testing.assert_allclose(s["expert_load"], [2 / 6, 2 / 6, 2 / 6], rtol=1e-6)
  np.testing.assert_allclose(s["router_entropy"], (np.log(2) + 0 + np.log(3)) / 3, rtol=1e-5)
  np.testing.assert_array_equal(s["lang_tokens"], [2, 1])     # the padded token is not counted
  np.testing.assert_array_equal(s["lang_own_hits"], [2, 0])   # token 1: own expert 0 not in (1, 2)


def test_padding_never_changes_losses_or_stats():
  r = np.random.RandomState(0)
  logits = jnp.asarray(r.randn(6, 4), jnp.float32)
  mask = jnp.asarray([1, 1, 0, 1, 0, 1])
  forced = jnp.asarray([0, 1, 2, 3, 0, 1])
  lang = jnp.asarray([0, 1, 1, 0, 1, 0])

  def everything(logits):
    rt = routing.route(logits, top_k=2, norm_topk=False, mode="hybrid", forced=forced, train=True)
    out = dict(lb=routing.load_balance_loss(rt.probs, rt.indices, mask),
               z=routing.z_loss(logits, mask), lpr=routing.lpr_loss(logits, mask * 1.0))
    out.update(routing.router_stats(rt.probs, rt.indices, mask, forced, 2, lang))
    return out

  a = everything(logits)
  b = everything(logits.at[2].set(50.0).at[4].set(-50.0))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)
