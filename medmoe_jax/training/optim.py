"""Optimizer: AdamW with warmup + cosine, global-norm clipping, no weight decay on norms and
biases, and freezing as a label tree (frozen parameters get zero updates and no optimizer state).
"""
from __future__ import annotations

import re

import jax
import optax

FROZEN, TRAINABLE = "frozen", "trainable"


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def freeze_labels(params, patterns: list[str]):
  """params (pure dict) -> same tree of "frozen"/"trainable" by regex search over "a/b/c" paths."""
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"config.train.freeze: bad regex {p!r}: {e}") from None
  return jax.tree_util.tree_map_with_path(
      lambda path, _: FROZEN if any(r.search(path_str(path)) for r in compiled) else TRAINABLE,
      params)


def decay_mask(params):
  """Weight decay on weight matrices (routers included), not on norm scales or biases."""
  def is_decayed(path, x):
    name = path_str(path)
    return not (name.endswith("bias") or name.endswith("scale"))
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def lr_schedule(train_cfg):
  steps = int(train_cfg.steps)
  warmup = max(1, int(round(train_cfg.warmup_frac * steps)))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr, warmup_steps=warmup,
      decay_steps=max(steps, warmup + 1), end_value=train_cfg.lr * train_cfg.min_lr_ratio)


def make_optimizer(train_cfg, params, freeze_patterns: list[str]):
  """Returns (optax transform, labels tree). Clipping sees only trainable gradients."""
  adamw = optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(lr_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                  weight_decay=train_cfg.weight_decay, mask=decay_mask),
  )
  labels = freeze_labels(params, freeze_patterns)
  tx = optax.multi_transform({TRAINABLE: adamw, FROZEN: optax.set_to_zero()}, labels)
  return tx, labels
