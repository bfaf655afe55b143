"""The training loss by value: next-token targets on a packed batch (prompt masks, document
boundaries, padding), the cross-entropy, per-language sums, router losses with their weights, and
held-out perplexity scoring the same numbers as the training loss."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import build
from medmoe_jax import config as cfg_lib
from medmoe_jax.evaluation import perplexity
from medmoe_jax.evaluation.lm import LanguageModel
from medmoe_jax.training import step as step_lib

# Row 0: document A (prompt = its first token), document B (plain text: every token a target),
# padding.
# Row 1: one document whose first three tokens are a prompt.
BATCH = dict(
    tokens=np.array([[5, 6, 7, 8, 9, 10, 11, 12],
                     [20, 21, 22, 23, 24, 25, 26, 27]], np.int32),
    segment_ids=np.array([[1, 1, 1, 2, 2, 2, 0, 0],
                          [1, 1, 1, 1, 1, 1, 1, 1]], np.int32),
    positions=np.array([[0, 1, 2, 0, 1, 2, 0, 0],
                        [0, 1, 2, 3, 4, 5, 6, 7]], np.int32),
    lang_ids=np.array([[3, 3, 3, 1, 1, 1, -1, -1],
                       [0, 0, 0, 0, 0, 0, 0, 0]], np.int32),
    loss_mask=np.array([[0, 1, 1, 1, 1, 1, 0, 0],
                        [0, 0, 0, 1, 1, 1, 1, 1]], np.int32))
# (row, position t) whose next token t+1 is a target: inside one document, not a prompt token.
# Row 0: 5->6, 6->7 (not 7->8: it crosses into B), 8->9, 9->10 (not 10->padding).
# Row 1: 22->23 ... 26->27 (20->21 and 21->22 predict prompt tokens).
TARGET_POSITIONS = [(0, 0), (0, 1), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6)]


def _hand_nll(logits):
  """-log softmax(logits[b, t])[tokens[b, t + 1]] at each target position, in float64."""
  out = []
  for b, t in TARGET_POSITIONS:
    z = np.asarray(logits[b, t], np.float64)
    lse = np.log(np.sum(np.exp(z - z.max()))) + z.max()
    out.append(lse - z[BATCH["tokens"][b, t + 1]])
  return np.asarray(out)


def test_token_targets_by_hand():
  targets, w = step_lib.token_targets({k: jnp.asarray(v) for k, v in BATCH.items()})
  want_w = np.zeros((2, 8))
  for b, t in TARGET_POSITIONS:
    want_w[b, t] = 1.0
  np.testing.assert_array_equal(np.asarray(w), want_w)
  np.testing.assert_array_equal(np.asarray(targets)[want_w > 0],
                                [6, 7, 9, 10, 23, 24, 25, 26, 27])
  # The evaluation's weights are the training's.
  np.testing.assert_array_equal(perplexity.target_weights(BATCH), want_w)


def test_lm_loss_by_hand():
  logits = np.random.RandomState(0).randn(2, 8, 32).astype(np.float32) * 3
  loss, stats = step_lib.lm_loss(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in BATCH.items()},
                                 num_langs=4)
  nll = _hand_nll(logits)
  np.testing.assert_allclose(float(loss), nll.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(stats["nll_sum"]), nll.sum(), rtol=1e-6)
  assert float(stats["tokens"]) == 9.0
  # Per language: 0 = row 1's five targets, 1 = document B's two, 3 = document A's two.
  lang = np.array([BATCH["lang_ids"][b, t] for b, t in TARGET_POSITIONS])
  want = [nll[lang == l].sum() for l in range(4)]
  np.testing.assert_allclose(np.asarray(stats["lang_nll_sum"]), want, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(stats["lang_tokens"]), [5, 2, 0, 2])


@pytest.fixture(scope="module")
def lpr_run():
  """The MoE-LPR stage-2 model (every layer MoE, LPR loss) with all three router losses on,
  weighted differently, after one real train step built by the Trainer."""
  from conftest import load_config
  c = load_config("moe_lpr_stage2")
  c.model.update(dict(vocab_size=512, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      d_ff=64))
  c.data.update(dict(seq_len=8, batch_size=2))
  c.moe.update(dict(lb_loss_weight=0.03, z_loss_weight=0.002, lpr_loss_weight=0.1))
  c.train.freeze = ""  # every parameter trains: the gradient covers the whole objective
  c.mesh.update(dict(data=1))
  from medmoe_jax import sharding
  graphdef, state, step, mesh = build(c, mesh=sharding.make_mesh(c, jax.devices()[:1]))
  params = jax.device_get(state.params)
  rng = jax.random.key(7)
  _, metrics = step(state, {k: jnp.asarray(v) for k, v in BATCH.items()}, rng)
  return c, graphdef, params, jax.device_get(metrics), jax.random.fold_in(rng, 0)


def test_forward_loss_is_the_hand_computed_cross_entropy(lpr_run):
  """The step's "loss" is the cross-entropy of the model's own logits (same params, same rng)."""
  from flax import nnx
  c, graphdef, params, metrics, rng = lpr_run
  model = nnx.merge(graphdef, params)
  logits, _ = model(*(jnp.asarray(BATCH[k]) for k in ("tokens", "segment_ids", "positions",
                                                      "lang_ids")), train=True, rng=rng)
  np.testing.assert_allclose(float(metrics["loss"]), _hand_nll(np.asarray(logits)).mean(), rtol=1e-5)


def test_total_loss_adds_the_weighted_router_losses(lpr_run):
  """total_loss = loss + 0.03 lb + 0.002 z + 0.1 lpr (each averaged over MoE layers), and that
  total is what the step differentiates: its gradient norm is the norm of the gradient of
  hand-assembled cross-entropy + weighted router losses."""
  from flax import nnx
  c, graphdef, params, m, rng = lpr_run
  for name in ("lb_loss", "z_loss", "lpr_loss"):
    assert float(m[name]) > 1e-3, name  # each term really contributes
  want = float(m["loss"]) + 0.03 * float(m["lb_loss"]) + 0.002 * float(m["z_loss"]) \
      + 0.1 * float(m["lpr_loss"])
  np.testing.assert_allclose(float(m["total_loss"]), want, rtol=1e-6)

  batch = {k: jnp.asarray(v) for k, v in BATCH.items()}
  w = np.zeros((2, 8), np.float32)
  for b, t in TARGET_POSITIONS:
    w[b, t] = 1.0
  nxt = jnp.asarray(np.concatenate([BATCH["tokens"][:, 1:], BATCH["tokens"][:, :1]], 1))

  def objective(p):
    logits, aux = nnx.merge(graphdef, p)(batch["tokens"], batch["segment_ids"], batch["positions"],
                                         batch["lang_ids"], train=True, rng=rng)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, nxt)
    ce = jnp.sum(nll * w) / w.sum()
    return ce + 0.03 * jnp.mean(aux["lb_loss"]) + 0.002 * jnp.mean(aux["z_loss"]) \
        + 0.1 * jnp.mean(aux["lpr_loss"])

  grads = jax.jit(jax.grad(objective))(params)  # one program, not every op compiled eagerly
  np.testing.assert_allclose(float(m["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-5)


def test_perplexity_scores_the_training_loss(lpr_run):
  """Held-out scoring (LanguageModel.token_scores through the KV-cache prefill, weighted by
  perplexity.target_weights, as perplexity.evaluate does) gives the training loss of the same
  batch: forward_loss at inference (train=False)."""
  c, graphdef, params, _, _ = lpr_run
  from medmoe_jax import sharding
  batch = {k: jnp.asarray(v) for k, v in BATCH.items()}
  loss, _ = step_lib.forward_loss(params, graphdef, batch, None, step_lib.LossWeights(), 6,
                                  train=False)
  lm = LanguageModel.from_params(cfg_lib.resolve(c), params,
                                 mesh=sharding.make_mesh(c, jax.devices()[:1]), batch_size=2)
  scores = lm.token_scores(BATCH)
  w = perplexity.target_weights(BATCH)
  nll = -float(np.sum(scores["logprobs"] * w)) / float(np.sum(w))
  np.testing.assert_allclose(nll, float(loss), rtol=1e-5)
