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
from method_runs import random_params
from medmoe_jax import config as cfg_lib
from medmoe_jax import upcycle
from medmoe_jax.checkpoint import Checkpointer
from medmoe_jax.model import Transformer
from medmoe_jax.model.layers import MLP
from medmoe_jax.model.moe import MoEFeedForward
from medmoe_jax.training.step import TrainState

SHAPES = dict(vocab_size=256, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=64)
BATCH = packed_batch(batch=2, seq=16, vocab=256)
REAL = BATCH["segment_ids"] > 0  # MoE layers give padding tokens no FFN output; dense ones do


def _config(name="post_moe", **moe):
  c = load_config(name)
  c.model.update(SHAPES)
  c.moe.update(dict(backend="dense", **moe))
  cfg_lib.validate(c)
  return c


@functools.partial(jax.jit, static_argnums=(0, 2))
def _forward(spec, params, train):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))))
  b = {k: jnp.asarray(v) for k, v in BATCH.items()}
  return nnx.merge(graphdef, params)(b["tokens"], b["segment_ids"], b["positions"], b["lang_ids"],
                                     train=train)[0]


def _logits(spec, params, train=False):
  return np.asarray(_forward(spec, params, train))[REAL]


@pytest.fixture(scope="module")
def dense():
  spec = cfg_lib.model_spec(_config("dense"))
  params = random_params(spec, seed=1, std=0.3)
  ref = _logits(spec, params)
  assert np.abs(ref).max() > 1.0  # comparisons below are not between near-zero arrays
  return spec, params, ref


@pytest.mark.parametrize("method,name,train", [("apollo", "post_moe", True),
                                               ("lpr", "moe_lpr_stage1", False)])
def test_renormalised_upcycle_equals_dense_at_step0(dense, method, name, train):
  dspec, dparams, ref = dense
  c = _config(name, norm_topk=True)
  assert c.upcycle.method == method
  spec = cfg_lib.model_spec(c)
  fresh = random_params(spec, seed=2)
  params = upcycle.upcycle(method, dparams, fresh, spec)
  # train=True: hybrid-k forcing changes which experts, and renormalises: still the dense model.
  np.testing.assert_allclose(_logits(spec, params, train), ref, atol=2e-5, rtol=0)
  # Every expert is a copy of the layer's FFN; the router is the fresh one.
  last = len(spec.segments) - 1
  moe, new_router = params["segments"][last]["blocks"]["ffn"], fresh["segments"][last]["blocks"]["ffn"]["router"]
  dense_ffn = dparams["segments"][0]["blocks"]["ffn"]
  n = moe["wi_gate"].shape[0]
  for e in range(spec.moe.num_experts):
    np.testing.assert_array_equal(moe["wi_gate"][:, e], dense_ffn["gate_proj"]["kernel"][-n:])
    np.testing.assert_array_equal(moe["wi_up"][:, e], dense_ffn["up_proj"]["kernel"][-n:])
    np.testing.assert_array_equal(moe["wo"][:, e], dense_ffn["down_proj"]["kernel"][-n:])
  np.testing.assert_array_equal(moe["router"], new_router)


def test_upcycle_keeps_a_shared_expert_fresh(dense):
  """A shared expert (moe.shared_expert_d_ff) is new in the MoE layers: upcycling copies the
  dense FFN into the routed experts and takes the shared expert and its gate from the fresh
  init, which then adds to the dense model's output."""
  dspec, dparams, ref = dense
  c = _config("post_moe", norm_topk=True, shared_expert_d_ff=24, shared_expert_gate=True)
  spec = cfg_lib.model_spec(c)
  fresh = random_params(spec, seed=2)
  params = upcycle.upcycle("apollo", dparams, fresh, spec)
  last = len(spec.segments) - 1
  got, new = params["segments"][last]["blocks"]["ffn"], fresh["segments"][last]["blocks"]["ffn"]
  for key in ("shared_expert", "shared_expert_gate", "router"):
    jax.tree.map(np.testing.assert_array_equal, got[key], new[key])
  n = got["wi_up"].shape[0]
  np.testing.assert_array_equal(got["wi_up"][:, 3], dparams["segments"][0]["blocks"]["ffn"]["up_proj"]["kernel"][-n:])
  assert np.abs(_logits(spec, params) - ref).max() > 1e-3


def test_unnormalised_layer_is_weight_sum_times_dense_ffn():
  spec = cfg_lib.model_spec(_config(layers="last:1", norm_topk=False, language_routing="none"))
  ffn = random_params(cfg_lib.model_spec(_config("dense")), seed=3)["segments"][0]["blocks"]["ffn"]
  fresh = random_params(spec, seed=4, router_std=0.1)["segments"][1]["blocks"]["ffn"]
  experts = upcycle._experts_from_ffn({k: {"kernel": v["kernel"][-1:]} for k, v in ffn.items()}, fresh)

  @jax.jit
  def layer(x):
    mlp = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: MLP(spec, rngs=nnx.Rngs(0)))),
                    {k: {"kernel": v["kernel"][-1]} for k, v in ffn.items()})
    moe = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: MoEFeedForward(spec, rngs=nnx.Rngs(0)))),
                    {k: v[0] for k, v in experts.items()})
    y, _ = moe(x, -jnp.ones(x.shape[:2], jnp.int32), jnp.ones(x.shape[:2], bool), train=False)
    probs = jax.nn.softmax(jnp.einsum("bsd,de->bse", x, moe.router[...]), axis=-1)
    top = jax.lax.top_k(probs, spec.moe.top_k)[0].sum(-1, keepdims=True)  # p1 + p2, [B, S, 1]
    return y, top, mlp(x)

  y, top, y_dense = layer(jax.random.normal(jax.random.key(5), (2, 8, spec.d_model)))
  assert float(top.max()) < 0.95  # not renormalised: the scale is visible
  np.testing.assert_allclose(np.asarray(y), np.asarray(top * y_dense), atol=1e-5, rtol=1e-5)


def test_ct_equals_base_exactly_and_keeps_base(dense):
  dspec, dparams, ref = dense
  c = _config("moe_ct")
  spec = cfg_lib.model_spec(c)
  assert spec.segments == (("dense", 3), ("appended", c.moe.appended))
  fresh = random_params(spec, seed=6)
  assert float(fresh["segments"][1]["fusion"]["bias"]) != 0  # upcycle_ct must close the gate
  params = upcycle.upcycle("ct", dparams, fresh, spec)
  np.testing.assert_array_equal(_logits(spec, params, True), ref)
  jax.tree.map(np.testing.assert_array_equal, params["segments"][0], dparams["segments"][0])
  # An open gate changes the output: the appended blocks are really in the path.
  params["segments"][1]["fusion"]["bias"] = jnp.ones(())
  assert np.abs(_logits(spec, params, True) - ref).max() > 1e-3


def test_load_params_names_the_mismatch(dense, tmp_path):
  dspec, dparams, _ = dense
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
  with pytest.raises(ValueError, match="full-size copies"):
    c = _config(d_ff=32)
    spec = cfg_lib.model_spec(c)
    upcycle.upcycle("apollo", dparams, random_params(spec, seed=0), spec)
