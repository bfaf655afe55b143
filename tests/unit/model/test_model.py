"""Model behaviour: packing isolation, routing rules, backend agreement, scan unrolling.
Sharded training == one device: tests/e2e/test_sharded_training.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import build, packed_batch
from medmoe_jax import config as cfg_lib
from medmoe_jax.model import Transformer, layers, routing
from medmoe_jax.model.spec import parse_moe_layers, segments_for


def _model(c):
  return Transformer(cfg_lib.model_spec(c), rngs=nnx.Rngs(0))


def _call(model, b, train=False):
  return model(jnp.asarray(b["tokens"]), jnp.asarray(b["segment_ids"]), jnp.asarray(b["positions"]),
               jnp.asarray(b["lang_ids"]), train=train)


def test_packing_isolation(tiny_config):
  """Changing segment 1's tokens leaves segment 2's logits unchanged (MoE layers included)."""
  tiny_config.moe.backend = "dense"
  model = _model(tiny_config)
  b = packed_batch(batch=2)
  logits, _ = _call(model, b)
  b2 = {k: v.copy() for k, v in b.items()}
  seg1 = b["segment_ids"] == 1
  b2["tokens"][seg1] = (b["tokens"][seg1] + 7) % 512
  logits2, _ = _call(model, b2)
  seg2 = b["segment_ids"] == 2
  np.testing.assert_allclose(np.asarray(logits)[seg2], np.asarray(logits2)[seg2], atol=1e-5)
  assert np.abs(np.asarray(logits)[seg1] - np.asarray(logits2)[seg1]).max() > 1e-3


@pytest.mark.parametrize("seq", [64, 128, 256])
def test_blocked_causal_attention_equals_full_attention(seq):
  """The block-skipping attention (1, 2 and 4 query blocks at these lengths) equals
  jax.nn.dot_product_attention under the same packed causal mask, values and gradients, with
  grouped kv heads, several segments per row and trailing padding."""
  assert [layers.query_blocks(s) for s in (64, 128, 256)] == [1, 2, 4]
  r = np.random.RandomState(seq)
  q = jnp.asarray(r.randn(2, seq, 4, 16), jnp.float32)
  k, v = (jnp.asarray(r.randn(2, seq, 2, 16), jnp.float32) for _ in range(2))
  seg = np.zeros((2, seq), np.int32)
  seg[0, : seq // 3], seg[0, seq // 3: seq - 5] = 1, 2        # two documents, then padding
  seg[1, :] = 1 + (np.arange(seq) >= seq // 2 + 3)            # a boundary inside a query block
  mask = layers.attention_mask(jnp.asarray(seg))
  # Jitted: one compiled program each instead of every small op compiled on its own (eager).
  ours = jax.jit(lambda q, k, v: layers.causal_attention(q, k, v, mask))
  ref = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask))
  np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), atol=2e-6)
  ct = jnp.asarray(r.randn(2, seq, 4, 16), jnp.float32)
  grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums=(0, 1, 2)))(q, k, v)
  for g_ours, g_ref in zip(grads(ours), grads(ref)):
    np.testing.assert_allclose(g_ours, g_ref, atol=2e-5)


def test_hybrid_k_forces_own_expert_in_last_slot():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.1, 0.05, 0.05],    # own expert 3: outside top-2
                                [0.5, 0.3, 0.1, 0.05, 0.05],    # own expert 1: inside
                                [0.1, 0.2, 0.6, 0.05, 0.05]]))  # no language
  forced = jnp.asarray([3, 1, -1])
  r = routing.route(logits, top_k=2, norm_topk=False, mode="hybrid", forced=forced, train=True)
  np.testing.assert_array_equal(r.indices, [[0, 3], [0, 1], [2, 1]])
  # Weights are gathered from the full softmax, not renormalised.
  np.testing.assert_allclose(r.weights, [[0.5, 0.05], [0.5, 0.3], [0.6, 0.2]], rtol=1e-5)
  # At inference: plain top-k, no forcing.
  e = routing.route(logits, top_k=2, norm_topk=False, mode="hybrid", forced=forced, train=False)
  np.testing.assert_array_equal(e.indices, [[0, 1], [0, 1], [2, 1]])
  # norm_topk renormalises the final pair.
  n = routing.route(logits, top_k=2, norm_topk=True, mode="hybrid", forced=forced, train=True)
  np.testing.assert_allclose(n.weights[0], [0.5 / 0.55, 0.05 / 0.55], rtol=1e-5)


def test_hard_routing_top1_weight_one():
  logits = jnp.zeros((3, 4))
  r = routing.route(logits, top_k=2, norm_topk=False, mode="hard", forced=jnp.asarray([2, 0, 3]))
  np.testing.assert_array_equal(r.indices, [[2], [0], [3]])
  np.testing.assert_array_equal(r.weights, [[1.0], [1.0], [1.0]])


def test_capacity_equals_dense_when_nothing_dropped(tiny_config):
  tiny_config.moe.capacity_factor_train = tiny_config.moe.capacity_factor_eval = 8.0
  b = packed_batch(batch=2)
  tiny_config.moe.backend = "dense"
  ref, aux_ref = _call(_model(tiny_config), b, train=True)
  tiny_config.moe.backend = "capacity"
  out, aux = _call(_model(tiny_config), b, train=True)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)
  assert float(jnp.max(aux["dropped_fraction"])) == 0.0


def test_capacity_drops_over_capacity(tiny_config):
  tiny_config.moe.backend = "capacity"
  tiny_config.moe.capacity_factor_train = 0.25
  _, aux = _call(_model(tiny_config), packed_batch(batch=2), train=True)
  assert float(jnp.min(aux["dropped_fraction"])) > 0.0


def test_moe_layer_specs_and_segments():
  assert parse_moe_layers("last:2", 24) == (22, 23)
  assert segments_for(24, (22, 23)) == (("dense", 22), ("moe", 2))
  assert parse_moe_layers("every:2", 4) == (1, 3)
  assert segments_for(4, (1, 3)) == (("dense", 1), ("moe", 1), ("dense", 1), ("moe", 1))
  assert parse_moe_layers("all", 3) == (0, 1, 2)
  assert parse_moe_layers("none", 3) == ()
  assert parse_moe_layers("0,2", 3) == (0, 2)
  assert parse_moe_layers([1], 3) == (1,)


def test_post_moe_param_shapes(tiny_config):
  model = _model(tiny_config)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  dense, moe = params["segments"][0]["blocks"], params["segments"][1]["blocks"]
  assert dense["ffn"]["gate_proj"]["kernel"].shape == (2, 64, 128)
  assert moe["ffn"]["wi_gate"].shape == (2, 7, 64, 128)
  assert moe["ffn"]["router"].shape == (2, 64, 7)


@pytest.mark.e2e  # whole train steps compiled: minutes on 2 cores
@pytest.mark.parametrize("unroll", [0, 2])
def test_unrolled_scan_equals_rolled_scan(tiny_config, unroll):
  """config.model.scan_unroll changes how the layer scan is compiled, not what it computes: two
  train steps give the same losses and parameters as the rolled scan (hybrid-k MoE layers with
  their dropout rng included)."""
  results = []
  for u in (1, unroll):
    c = tiny_config.copy_and_resolve_references()
    c.model.num_layers = 5  # segments of 3 dense + 2 MoE blocks: unroll 2 leaves a remainder
    c.model.scan_unroll = u
    _, state, step, _ = build(c)
    losses = []
    for i in range(2):
      state, metrics = step(state, packed_batch(seed=i), jax.random.key(0))
      losses.append(float(metrics["loss"]))
    results.append((losses, jax.device_get(state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), results[0][1], results[1][1])


def test_scan_unroll_must_be_a_non_negative_int(tiny_config):
  tiny_config.model.scan_unroll = -1
  with pytest.raises(cfg_lib.ConfigError, match="model.scan_unroll"):
    cfg_lib.validate(tiny_config, 1)
