"""Upcycling: a dense model's params become each method's MoE params with the promised step-0
behaviour; source checkpoints are read by name and shape, with errors that say which."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import load_config
from helpers import packed_batch
from medmoe_jax import config as cfg_lib
from medmoe_jax import upcycle
from medmoe_jax.checkpoint import Checkpointer
from medmoe_jax.model import Transformer
from medmoe_jax.model.layers import MLP
from medmoe_jax.model.moe import MoEFeedForward
from medmoe_jax.training.step import TrainState

SHAPES = dict(vocab_size=256, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=64)


def _config(name="post_moe", **moe):
  c = load_config(name)
  c.model.update(SHAPES)
  c.moe.update(dict(backend="dense", num_experts=7, **moe))
  return c


def _params(spec, seed, scale=1.0):
  """Initialised params with larger random weights than init (so mistakes show in the logits)."""
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(spec, rngs=nnx.Rngs(seed)),
                                                      nnx.Param)))()
  keys = iter(jax.random.split(jax.random.key(seed + 100), 64))
  def perturb(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name.endswith("scale"):
      return x + 0.2 * jax.random.normal(next(keys), x.shape)
    return x * scale
  return jax.tree_util.tree_map_with_path(perturb, params)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(spec, params, b, train):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, params)
  return model(b["tokens"], b["segment_ids"], b["positions"], b["lang_ids"], train=train)[0]


def _logits(spec, params, b, train=False):
  return np.asarray(_forward(spec, params, {k: jnp.asarray(v) for k, v in b.items()}, train))


@pytest.fixture(scope="module")
def dense():
  spec = cfg_lib.model_spec(_config("dense"))
  return spec, _params(spec, seed=1, scale=4.0)


@pytest.mark.parametrize("method,layers", [("apollo", "last:2"), ("lpr", "all")])
def test_renormalised_upcycle_equals_dense_at_step0(dense, method, layers):
  dspec, dparams = dense
  c = _config(layers=layers, norm_topk=True, router_init_std=0.5)
  c.upcycle.method = method
  spec = cfg_lib.model_spec(c)
  fresh = _params(spec, seed=2)
  params = upcycle.upcycle(method, dparams, fresh, spec)
  b = packed_batch(batch=2, seq=16, vocab=256)
  real = b["segment_ids"] > 0  # MoE layers give padding tokens no FFN output; dense ones do
  ref = _logits(dspec, dparams, b)[real]
  assert np.abs(ref).max() > 1.0  # the comparison below is not between two near-zero arrays
  np.testing.assert_allclose(_logits(spec, params, b)[real], ref, atol=2e-5, rtol=0)
  # Hybrid-k forcing during training renormalises too: still the dense model.
  np.testing.assert_allclose(_logits(spec, params, b, train=True)[real], ref, atol=2e-5, rtol=0)
  # Every expert is a copy of the layer's FFN; the router is the fresh one.
  moe = params["segments"][len(spec.segments) - 1]["blocks"]["ffn"]
  dense_ffn = dparams["segments"][0]["blocks"]["ffn"]
  last = spec.num_layers - 1
  for e in range(spec.moe.num_experts):
    np.testing.assert_array_equal(moe["wi_gate"][-1, e], dense_ffn["gate_proj"]["kernel"][last])
    np.testing.assert_array_equal(moe["wo"][-1, e], dense_ffn["down_proj"]["kernel"][last])
  np.testing.assert_array_equal(moe["router"], fresh["segments"][len(spec.segments) - 1]["blocks"]["ffn"]["router"])


def test_unnormalised_layer_is_weight_sum_times_dense_ffn():
  c = _config(layers="last:1", norm_topk=False, language_routing="none", router_init_std=0.1)
  spec = cfg_lib.model_spec(c)
  mlp = MLP(spec, rngs=nnx.Rngs(3))
  moe = MoEFeedForward(spec, rngs=nnx.Rngs(4))
  d = {"gate_proj": {"kernel": mlp.gate_proj.kernel.value[None]},
       "up_proj": {"kernel": mlp.up_proj.kernel.value[None]},
       "down_proj": {"kernel": mlp.down_proj.kernel.value[None]}}
  fresh = {k: v[None] for k, v in nnx.to_pure_dict(nnx.state(moe, nnx.Param)).items()}
  new = upcycle._experts_from_ffn(d, fresh)
  nnx.update(moe, {k: v[0] for k, v in new.items()})
  x = jax.random.normal(jax.random.key(5), (2, 8, spec.d_model))
  valid = jnp.ones((2, 8), bool)
  y, _ = moe(x, -jnp.ones((2, 8), jnp.int32), valid, train=False)
  probs = jax.nn.softmax(jnp.einsum("bsd,de->bse", x, moe.router.value), axis=-1)
  top = jax.lax.top_k(probs, spec.moe.top_k)[0].sum(-1, keepdims=True)  # p1 + p2, [B, S, 1]
  assert float(top.min()) < 0.9  # not renormalised: the scale is visible
  np.testing.assert_allclose(np.asarray(y), np.asarray(top * mlp(x)), atol=1e-5, rtol=1e-5)


def test_ct_equals_base_exactly_and_keeps_base(dense):
  dspec, dparams = dense
  c = _config("moe_ct")
  c.moe.backend = "dense"
  spec = cfg_lib.model_spec(c)
  assert spec.segments == (("dense", 3), ("appended", c.moe.appended))
  fresh = _params(spec, seed=6)
  fresh["segments"][1]["fusion"]["bias"] = jnp.ones(())  # upcycle_ct must close the gate
  params = upcycle.upcycle("ct", dparams, fresh, spec)
  b = packed_batch(batch=2, seq=16, vocab=256)
  np.testing.assert_array_equal(_logits(spec, params, b, train=True), _logits(dspec, dparams, b))
  jax.tree.map(np.testing.assert_array_equal, params["segments"][0], dparams["segments"][0])
  # An open gate changes the output: the appended blocks are really in the path.
  params["segments"][1]["fusion"]["bias"] = jnp.ones(())
  assert np.abs(_logits(spec, params, b, train=True) - _logits(dspec, dparams, b)).max() > 1e-3


def test_load_params_names_the_mismatch(dense, tmp_path):
  dspec, dparams = dense
  ck = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  ck.save(5, TrainState(jnp.zeros((), jnp.int32), dparams, {}), {})
  ck.close()
  loaded, step = upcycle.load_params(str(tmp_path / "run"), upcycle.abstract_params(dspec))
  assert step == 5
  jax.tree.map(np.testing.assert_array_equal, loaded, dparams)
  c = _config("dense")
  c.model.d_ff = 96
  with pytest.raises(ValueError, match=r"segments/0/blocks/ffn/down_proj/kernel has shape \(3, 64, 32\)"):
    upcycle.load_params(str(tmp_path / "run"), upcycle.abstract_params(cfg_lib.model_spec(c)))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    upcycle.find_step_dir(str(tmp_path / "nope"))
