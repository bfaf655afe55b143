"""Loss and the jitted train step over (graphdef, params) with pure-dict parameters."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from medmoe_jax.training.spec import TrainSpec


class LossWeights(NamedTuple):
  lb: float = 0.0
  z: float = 0.0
  lpr: float = 0.0


def loss_weights(t: TrainSpec) -> LossWeights:
  """The weights a run's router losses get (the load-balancing one already on our per-choice
  loss, whatever units the config gave it in: config.resolve converts)."""
  return LossWeights(t.lb_loss_weight, t.z_loss_weight, t.lpr_loss_weight)


class TrainState(NamedTuple):
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def token_targets(batch):
  """Next-token targets and their weights. Position t predicts targets[t+1] (the batch's
  "targets", the tokens themselves where it has none) only within the same segment and where
  loss_mask marks t+1 as a target. Returns targets, weights [B, S]."""
  seg, lm = batch["segment_ids"], batch["loss_mask"]
  labels = batch["targets"] if "targets" in batch else batch["tokens"]
  targets = jnp.concatenate([labels[:, 1:], jnp.zeros_like(labels[:, :1])], axis=1)
  same = jnp.concatenate([(seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0),
                          jnp.zeros_like(seg[:, :1], dtype=bool)], axis=1)
  nxt = jnp.concatenate([lm[:, 1:], jnp.zeros_like(lm[:, :1])], axis=1)
  return targets, (same & (nxt > 0)).astype(jnp.float32)


def lm_loss(logits, batch, num_langs: int):
  """Mean next-token cross-entropy plus per-language sums for per-language loss, from full
  logits [B, S, V] (the trainer computes the same from chunks: `nll_loss`)."""
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, token_targets(batch)[0])
  return nll_loss(nll, batch, num_langs)


def nll_loss(nll, batch, num_langs: int):
  """nll: [B, S] float32 negative log-likelihood of each position's next token (its value where
  the target weight is 0 is ignored). Mean next-token cross-entropy plus per-language sums for
  per-language loss."""
  _, w = token_targets(batch)
  nll = nll * w
  total = jnp.sum(nll)
  count = jnp.sum(w)
  stats = {"nll_sum": total, "tokens": count}
  if num_langs:
    lid = batch["lang_ids"]
    onehot = jax.nn.one_hot(jnp.where(lid >= 0, lid, num_langs), num_langs + 1)[..., :num_langs]
    stats["lang_nll_sum"] = jnp.einsum("bs,bsl->l", nll, onehot)
    stats["lang_tokens"] = jnp.einsum("bs,bsl->l", w, onehot)
  return total / jnp.maximum(count, 1.0), stats


def forward_loss(params, graphdef, batch, rng, weights: LossWeights, num_langs: int, train=True):
  model = nnx.merge(graphdef, params)
  h, aux = model.hidden_states(batch["tokens"], batch["segment_ids"], batch["positions"],
                               batch["lang_ids"], train=train, rng=rng)
  # The LM head and cross-entropy run in chunks: [B, S, V] logits are never materialised.
  ce, stats = nll_loss(model.token_nll(h, token_targets(batch)[0]), batch, num_langs)
  loss = ce
  metrics = {"loss": ce, **stats}
  if aux:
    # Each router loss is averaged over MoE layers, then weighted.
    for name, w in (("lb_loss", weights.lb), ("z_loss", weights.z), ("lpr_loss", weights.lpr)):
      if name in aux:
        value = jnp.mean(aux[name])
        metrics[name] = value
        if w:
          loss = loss + w * value
    for name in ("expert_load", "router_entropy", "dropped_fraction", "lang_own_hits",
                 "expert0_prob_sum", "original_tokens"):
      if name in aux:
        metrics[name] = aux[name]
    if "lang_tokens" in aux:
      metrics["moe_lang_tokens"] = aux["lang_tokens"]
  metrics["total_loss"] = loss
  return loss, metrics


def init_train_state(spec, train_cfg, *, seed: int = 0, freeze: list[str] | None = None):
  """Unsharded (graphdef, TrainState, tx) for a model spec; benchmarks and tools use it. The
  trainer jits the same construction with out_shardings instead."""
  from medmoe_jax.model import Transformer
  from medmoe_jax.training import optim
  model = Transformer(spec, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params)
  tx, _ = optim.make_optimizer(train_cfg, params, freeze or [])
  return graphdef, TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), tx


def make_train_step(graphdef, tx, weights: LossWeights, num_langs: int):
  """Returns train_step(state, batch, rng) -> (state, metrics); jit it with shardings.

  A non-finite loss or gradient norm never reaches the state: the step then keeps the old params
  and optimizer state (a select that XLA fuses into the update: no extra pass, no host sync) and
  only advances the step counter, so data and dropout rng move on as in a run without the fault.
  metrics["nonfinite"] (1.0 on such a step) lets the host apply config.train.on_nonfinite:
  stop the run, or count the skip and go on.
  """

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(forward_loss, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, graphdef, batch, rng, weights, num_langs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep, params, state.params)
    opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    metrics["grad_norm"] = grad_norm
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step

