"""Transformer.decode (the KV-cache path every evaluation number goes through) gives the training
forward's logits, by value: a prefill, and a prefill followed by one-token steps, for every model
family (dense, Post-MoE hybrid-k, hard language routing, MoE-CT's appended fused blocks)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import load_config
from helpers import decode_in_steps
from medmoe_jax import config as cfg_lib
from medmoe_jax.model import Transformer
from method_runs import random_params

S, PREFIX = 12, 5
# Row 0: one document of 12 tokens. Row 1: a 4-token document, then an 8-token one (its
# positions restart; it must not see the first). Languages differ per document.
SEG = np.array([[1] * 12, [1] * 4 + [2] * 8], np.int32)
POS = np.array([list(range(12)), list(range(4)) + list(range(8))], np.int32)
LANG = np.array([[4] * 12, [0] * 4 + [6] * 8], np.int32)
TOKENS = np.random.RandomState(0).randint(4, 256, (2, S)).astype(np.int32)


def _spec(name):
  c = load_config({"dense": "dense", "post_moe": "post_moe", "hard": "post_moe",
                   "moe_ct": "moe_ct"}[name])
  c.model.update(dict(vocab_size=256, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2,
                      d_ff=48))
  if name == "hard":
    c.moe.language_routing = "hard"
  if name != "dense":
    c.moe.capacity_factor_eval = 8.0  # nothing dropped: one-token steps route like the prefill
  return cfg_lib.model_spec(c)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _all_paths(graphdef, params, tokens, seg, pos, lang):
  """(full forward logits, prefill logits, prefill of PREFIX tokens + one-token steps logits)."""
  model = nnx.merge(graphdef, params)
  full, _ = model(tokens, seg, pos, lang, train=False)
  prefill, _, _ = model.decode(tokens, seg, pos, lang, model.init_cache(2, S), 0)
  return full, prefill, decode_in_steps(model, tokens, seg, pos, lang, PREFIX)


@pytest.mark.parametrize("name", ["dense", "post_moe", "hard", "moe_ct"])
def test_decode_equals_forward(name):
  spec = _spec(name)
  if name == "moe_ct":
    assert spec.segments[-1][0] == "appended"
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))))
  # Random weights far from init: MoE-CT's fusion gate open, routers decisive.
  params = jax.tree.map(jnp.asarray, random_params(spec, seed=1, std=0.15, router_std=0.8))
  full, prefill, stepped = (np.asarray(a) for a in _all_paths(
      graphdef, params, *(jnp.asarray(a) for a in (TOKENS, SEG, POS, LANG))))
  assert np.abs(full).max() > 1.0
  np.testing.assert_allclose(prefill, full, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(stepped, full, atol=2e-5, rtol=1e-5)
