"""Routing is math: pure functions from router logits to expert choices, weights and losses.

All router math runs in float32. Shapes: T tokens (flattened), E experts, k choices.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Routing(NamedTuple):
  indices: jax.Array  # [T, k] int32 expert ids, rank order (slot 0 = highest)
  weights: jax.Array  # [T, k] float32 combine weights
  probs: jax.Array    # [T, E] float32 softmax over all experts


def top_k_routing(probs, k: int, norm_topk: bool):
  """Top-k of the softmax. norm_topk renormalises the k weights to sum to 1 (exact at upcycling
  init); Apollo-MoE does not (the upcycled layer starts at (p1+p2)·FFN(x))."""
  weights, indices = jax.lax.top_k(probs, k)
  if norm_topk:
    weights = weights / jnp.maximum(jnp.sum(weights, -1, keepdims=True), 1e-9)
  return indices.astype(jnp.int32), weights


def force_expert(indices, probs, forced, norm_topk: bool):
  """Hybrid-k (Apollo-MoE): if the token's own expert `forced` [T] (-1 = no language) is not in
  its top-k, it replaces the lowest-ranked choice. Weights are gathered from the full softmax
  for the final set (then renormalised only if norm_topk)."""
  has = forced >= 0
  inside = jnp.any(indices == forced[:, None], axis=-1)
  replace = has & ~inside
  last = indices[:, -1]
  indices = indices.at[:, -1].set(jnp.where(replace, forced, last))
  weights = jnp.take_along_axis(probs, indices, axis=-1)
  if norm_topk:
    weights = weights / jnp.maximum(jnp.sum(weights, -1, keepdims=True), 1e-9)
  return indices, weights


def hard_language_routing(probs, forced):
  """Language-specific routing: top-1 to the token's own expert with weight 1. Tokens with no
  language (forced == -1, e.g. padding) fall back to the router's argmax."""
  fallback = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  idx = jnp.where(forced >= 0, forced, fallback)[:, None]
  return idx, jnp.ones(idx.shape, jnp.float32)


def route(logits, *, top_k: int, norm_topk: bool, mode: str, forced=None,
          train: bool = False) -> Routing:
  """logits: [T, E] -> Routing. `mode` in {"none", "hybrid", "hard", "specific"}; `forced`: [T]
  int32 own expert per token (-1 = none). Hybrid forcing applies only when train=True (at
  inference the router is plain top-k and needs no language tag). Hard routing applies in train
  and eval, because the model has no learned alternative. "specific" is Apollo-MoE's
  language-specific variant as its code builds it: in training the own expert with weight 1
  (like hard), at inference the router's plain top-k with its softmax weights, no language tag."""
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  if mode == "specific" and not train:
    mode = "none"
  if mode in ("hard", "specific"):
    if forced is None:
      raise ValueError(f"{mode} language routing needs the tokens' language experts in training")
    idx, w = hard_language_routing(probs, forced)
    return Routing(idx, w, probs)
  indices, weights = top_k_routing(probs, top_k, norm_topk)
  if mode == "hybrid" and train and forced is not None:
    indices, weights = force_expert(indices, probs, forced, norm_topk)
  elif mode not in ("none", "hybrid"):
    raise ValueError(f"unknown language routing mode {mode!r}; use 'none', 'hybrid', 'hard' or "
                     "'specific'")
  return Routing(indices, weights, probs)


def jitter_logits_input(x, rng, eps: float):
  """Multiplicative input jitter (Switch Transformer): x * U(1-eps, 1+eps), training only."""
  if eps <= 0 or rng is None:
    return x
  noise = jax.random.uniform(rng, x.shape, jnp.float32, 1.0 - eps, 1.0 + eps)
  return (x.astype(jnp.float32) * noise).astype(x.dtype)


def _masked_mean(values, mask):
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def load_balance_loss(probs, indices, mask):
  """Switch load balancing: E * sum_e f_e * P_e, f_e = fraction of routed slots to e,
  P_e = mean router probability of e, both over valid tokens (mask [T]). f_e counts the k slots
  of a token once each and divides by k, so a perfectly balanced router scores 1 for every k
  (HF's `load_balancing_loss_func` does not divide by k: its value is k times this one, so a
  weight tuned with HF's function is k times larger here). f_e is a count, so the gradient
  flows through P_e only."""
  e = probs.shape[-1]
  m = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(m), 1.0)
  counts = jnp.zeros((e,), jnp.float32).at[indices].add(jnp.broadcast_to(m[:, None], indices.shape))
  f = counts / (n * indices.shape[-1])
  p = jnp.sum(probs * m[:, None], axis=0) / n
  return e * jnp.sum(f * p)


def z_loss(logits, mask):
  """Router z-loss (ST-MoE): mean over valid tokens of logsumexp(logits)^2."""
  lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  return _masked_mean(lse * lse, mask)


def lpr_loss(logits, original_mask):
  """MoE-LPR language-priors loss: -log p_router(expert 0), averaged over tokens of original
  languages (original_mask [T]); other tokens contribute nothing. One log-softmax of the raw
  router logits (MoE-LPR's code applies softmax twice); computed from logits, not by log of a
  clipped probability, so the gradient stays exact even when p(expert 0) is tiny."""
  nll = -jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, 0]
  return _masked_mean(nll, original_mask)


def router_stats(probs, indices, mask, forced=None, num_langs: int = 0, lang_ids=None):
  """Per-layer statistics (float32): expert load fractions [E], mean router entropy, and, when
  languages are given, per-language counts of tokens and of own-expert hits in the top-k."""
  e = probs.shape[-1]
  m = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(m), 1.0)
  load = jnp.zeros((e,), jnp.float32).at[indices].add(jnp.broadcast_to(m[:, None], indices.shape))
  load = load / (n * indices.shape[-1])
  ent = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-9)), axis=-1)
  stats = {"expert_load": load, "router_entropy": _masked_mean(ent, mask)}
  if forced is not None and num_langs > 0 and lang_ids is not None:
    hit = jnp.any(indices == forced[:, None], axis=-1).astype(jnp.float32) * m
    lid = jnp.where(lang_ids >= 0, lang_ids, 0)
    stats["lang_tokens"] = jnp.zeros((num_langs,), jnp.float32).at[lid].add(m * (lang_ids >= 0))
    stats["lang_own_hits"] = jnp.zeros((num_langs,), jnp.float32).at[lid].add(hit * (lang_ids >= 0))
  return stats
