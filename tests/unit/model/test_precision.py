"""bf16 compute and rematerialisation, numerically: the gradient the train step takes
(value_and_grad of training.step.forward_loss) in bfloat16 compute stays within a stated tolerance
of float32, and remat "full" / "save_dots" give the gradients of no remat."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import load_config
from helpers import assert_tree_close, packed_batch
from medmoe_jax import config as cfg_lib
from medmoe_jax.model import Transformer
from medmoe_jax.training import step as step_lib
from method_runs import random_params

BATCH = {k: jnp.asarray(v) for k, v in packed_batch(batch=4, seq=32, vocab=256).items()}
WEIGHTS = step_lib.LossWeights(lb=0.01, z=0.001)
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 2e-3 per operation). Measured here:
# the loss within 7e-5 of float32's, the worst gradient tensor within 4.8% of its largest entry.
BF16_LOSS_RTOL, BF16_GRAD_REL = 2e-3, 1e-1


def _spec(**model):
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=256, d_model=64, num_layers=3, num_heads=4, num_kv_heads=2,
                      d_ff=96))
  c.model.update(model)
  c.moe.update(dict(layers="last:2", num_experts=4))
  return cfg_lib.model_spec(c)


@functools.cache
def _params():
  # Weights far from init (decisive routers, spread logits), so errors show in the loss.
  return jax.tree.map(jnp.asarray, random_params(_spec(), seed=2, std=0.1, router_std=0.5))


def _loss_and_grads(**model):
  spec = _spec(**model)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))))
  f = jax.jit(jax.value_and_grad(step_lib.forward_loss, has_aux=True),
              static_argnames=("graphdef", "weights", "num_langs"))
  (loss, metrics), grads = f(_params(), graphdef=graphdef, batch=BATCH, rng=jax.random.key(1),
                             weights=WEIGHTS, num_langs=20)
  return float(loss), float(metrics["loss"]), jax.device_get(grads)


@pytest.fixture(scope="module")
def float32():
  return _loss_and_grads()


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_gives_the_gradients_of_no_remat(float32, remat):
  loss, ce, grads = _loss_and_grads(remat=remat)
  assert loss == pytest.approx(float32[0], rel=1e-6)
  assert_tree_close(grads, float32[2], rel=1e-5, what=f"remat={remat} ")


def test_bf16_step_within_tolerance_of_float32(float32):
  loss, ce, grads = _loss_and_grads(dtype="bfloat16")
  assert abs(float32[1] - np.log(256)) > 0.2  # logits far from uniform
  assert loss == pytest.approx(float32[0], rel=BF16_LOSS_RTOL)
  assert_tree_close(grads, float32[2], rel=BF16_GRAD_REL, what="bf16 ")
  # Parameters stay float32 (param_dtype): bf16 is the compute, not the storage.
  assert all(g.dtype == np.float32 for g in jax.tree.leaves(grads))
