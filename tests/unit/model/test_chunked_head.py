"""The chunked LM head + cross-entropy equals the loss on full float32 logits: loss, per-language
sums and gradients, for tied and untied heads, one chunk or many."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from medmoe_jax import config as cfg_lib
from medmoe_jax.model import Transformer, chunked_head
from medmoe_jax.training import step as step_lib
from helpers import packed_batch


def full_logits_loss(params, graphdef, batch, num_langs):
  """The loss as computed before chunking: [B, S, V] float32 logits, then optax."""
  model = nnx.merge(graphdef, params)
  logits, _ = model(batch["tokens"], batch["segment_ids"], batch["positions"], batch["lang_ids"],
                    train=False)
  targets, w = step_lib.token_targets(batch)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  lid = batch["lang_ids"]
  onehot = jax.nn.one_hot(jnp.where(lid >= 0, lid, num_langs), num_langs + 1)[..., :num_langs]
  return jnp.sum(nll * w) / jnp.sum(w), jnp.einsum("bs,bsl->l", nll * w, onehot)


def chunked_loss(params, graphdef, batch, num_langs):
  loss, m = step_lib.forward_loss(params, graphdef, batch, None, step_lib.LossWeights(),
                                  num_langs, train=False)
  return loss, m["lang_nll_sum"]


# chunk 24: the largest divisor of seq 32 below it, 16; 0: the whole sequence in one chunk.
@pytest.mark.parametrize("tied,chunk", [(True, 8), (False, 24), (False, 0)])
def test_chunked_loss_and_grads_equal_full_logits(tied, chunk):
  c = cfg_lib.base_config()
  c.model.tie_embeddings = tied
  c.model.loss_chunk = chunk
  c.moe.layers = "none"
  spec = cfg_lib.model_spec(c)
  graphdef, params = nnx.split(Transformer(spec, rngs=nnx.Rngs(0)), nnx.Param)
  params = nnx.to_pure_dict(params)
  batch = {k: jnp.asarray(v) for k, v in packed_batch(batch=4, seq=32, vocab=spec.vocab_size).items()}
  n = len(cfg_lib.language_list(c))
  (l_ref, lang_ref), g_ref = jax.jit(jax.value_and_grad(full_logits_loss, has_aux=True),
                                     static_argnums=(1, 3))(params, graphdef, batch, n)
  (l_new, lang_new), g_new = jax.jit(jax.value_and_grad(chunked_loss, has_aux=True),
                                     static_argnums=(1, 3))(params, graphdef, batch, n)
  np.testing.assert_allclose(l_new, l_ref, rtol=1e-6)
  np.testing.assert_allclose(lang_new, lang_ref, rtol=1e-5, atol=1e-5)
  flat_ref, flat_new = jax.tree.leaves(g_ref), jax.tree.leaves(g_new)
  assert len(flat_ref) == len(flat_new)
  for a, b in zip(flat_ref, flat_new):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
  head = g_new["embed"]["embedding"] if tied else g_new["lm_head"]["kernel"]
  assert float(jnp.max(jnp.abs(head))) > 0  # the head gets its gradient through the chunks


def test_token_nll_never_holds_full_logits():
  """The compiled forward + backward holds one chunk's logits, not [B, S, V]."""
  b, s, d, v = 2, 256, 16, 4096
  h = jax.random.normal(jax.random.key(0), (b, s, d))
  w = jax.random.normal(jax.random.key(1), (d, v)) * 0.1
  t = jax.random.randint(jax.random.key(2), (b, s), 0, v)

  def temp_bytes(chunk):
    f = jax.jit(jax.grad(lambda h, w: jnp.sum(chunked_head.token_nll(h, w, t, chunk)), (0, 1)))
    return f.lower(h, w).compile().memory_analysis().temp_size_in_bytes

  full = b * s * v * 4
  assert temp_bytes(0) >= full            # one chunk: the whole logits
  assert temp_bytes(32) < full / 2        # 8 chunks: a fraction of them


def test_chunk_length_divides_the_sequence():
  assert chunked_head.chunk_length(4096, 512) == 512
  assert chunked_head.chunk_length(100, 64) == 50
  assert chunked_head.chunk_length(128, 0) == 128
  assert chunked_head.chunk_length(128, 1024) == 128
