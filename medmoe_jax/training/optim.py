"""Optimizer: AdamW with warmup + cosine, global-norm clipping, no weight decay on norms and
biases, and freezing as a label tree (frozen parameters get zero updates and no optimizer state).

Freezing has two granularities:
- whole parameters, by regex over "a/b/c" paths or a method preset ("preset:lpr_stage1"), via
  optax.multi_transform: frozen leaves get set_to_zero and no Adam moments;
- expert slices (`freeze_experts`, MoE-LPR's frozen expert 0): the experts of a layer are one
  stacked tensor [.., E, D, F], so a frozen expert is a slice, not a leaf. Its gradient is zeroed
  before clipping (the global norm and the moments never see it) and its final update is zeroed
  after AdamW (weight decay would otherwise shrink it), so it stays bit-identical. We keep the
  stacked layout rather than storing expert 0 as a separate parameter because every dispatch
  backend, the expert-axis sharding and the HF Qwen2-MoE export all want one [E, ...] tensor;
  the price is that Adam allocates (zero) moments for the frozen slice, 1/E of the expert moments.
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import optax

from medmoe_jax import log
from medmoe_jax.treepath import path_str  # re-exported: tests and upcycle name it here

_log = log.get(__name__)

FROZEN, TRAINABLE = "frozen", "trainable"

# Stacked expert weights of a MoE FFN ([..., E, D, F] / [..., E, F, D]); routers are [.., D, E].
EXPERT_WEIGHT_RE = re.compile(r"(^|/)ffn/(wi_gate|wi_up|wo)$")




def _appended_segments(params) -> list[str]:
  segs = params.get("segments", {}) if isinstance(params, dict) else {}
  return [str(i) for i, s in segs.items() if isinstance(s, dict) and "fusion" in s]


# Method presets: name -> (params -> (regexes of frozen paths, frozen expert ids)).
FREEZE_PRESETS = {
    # Apollo-MoE trains everything.
    "apollo": lambda params: ([], ()),
    # MoE-LPR stage 1: only the new experts and the routers train; attention, norms, embeddings,
    # dense FFNs and expert 0 (the original FFN) stay as they were.
    "lpr_stage1": lambda params: ([r"^(?!.*ffn/(router|wi_gate|wi_up|wo)$)"], (0,)),
    # MoE-LPR stage 2: only the routers train.
    "lpr_stage2": lambda params: ([r"^(?!.*ffn/router$)"], ()),
    # MoE-CT: the whole base model is frozen; the appended blocks and their fusion gate train.
    "ct": lambda params: ([r"^(?!segments/(" + "|".join(_appended_segments(params)) + r")/)"], ()),
}


def expand_freeze(params, items: list[str], frozen_experts=()) -> tuple[list[str], tuple[int, ...]]:
  """config.train.freeze items (regexes and "preset:NAME") -> (regexes, frozen expert ids)."""
  patterns, experts = [], set(int(e) for e in frozen_experts)
  for item in items:
    if item.startswith("preset:"):
      name = item.split(":", 1)[1]
      if name not in FREEZE_PRESETS:
        raise ValueError(f"config.train.freeze: unknown preset {name!r}; choose one of "
                         f"{', '.join('preset:' + n for n in FREEZE_PRESETS)}")
      if name == "ct" and not _appended_segments(params):
        raise ValueError("config.train.freeze: preset:ct needs appended MoE blocks; set "
                         "config.moe.appended>=1")
      regexes, ex = FREEZE_PRESETS[name](params)
      patterns.extend(regexes)
      experts.update(ex)
    else:
      patterns.append(item)
  return patterns, tuple(sorted(experts))


def freeze_labels(params, patterns: list[str], *, require_match: bool = False):
  """params (pure dict) -> same tree of "frozen"/"trainable" by regex search over "a/b/c" paths.
  require_match: a pattern that matches no parameter is an error (almost always a typo)."""
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"config.train.freeze: bad regex {p!r}: {e}") from None
  paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if require_match:
    for r in compiled:
      if not any(r.search(s) for s in paths):
        raise ValueError(f"config.train.freeze: {r.pattern!r} matches no parameter; paths look "
                         f"like {paths[-1]!r}")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: FROZEN if any(r.search(path_str(path)) for r in compiled) else TRAINABLE,
      params)


def _expert_axis(path, leaf) -> int | None:
  return leaf.ndim - 3 if EXPERT_WEIGHT_RE.search(path_str(path)) else None


def zero_expert_slices(experts: tuple[int, ...]) -> optax.GradientTransformation:
  """Zero the slices of `experts` along the expert axis of every stacked expert weight."""
  experts = tuple(int(e) for e in experts)

  def update_fn(updates, state, params=None):
    del params
    if not experts:
      return updates, state

    def f(path, u):
      axis = _expert_axis(path, u)
      if axis is None:
        return u
      shape = [1] * u.ndim
      shape[axis] = u.shape[axis]
      frozen = jnp.isin(jnp.arange(u.shape[axis]), jnp.asarray(experts)).reshape(shape)
      return jnp.where(frozen, jnp.zeros((), u.dtype), u)

    return jax.tree_util.tree_map_with_path(f, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def param_counts(params, labels, experts: tuple[int, ...] = ()) -> tuple[int, int]:
  """(trainable, frozen) element counts; works on arrays and ShapeDtypeStructs."""
  trainable = frozen = 0
  flat_labels = jax.tree_util.tree_leaves(labels)
  for (path, leaf), label in zip(jax.tree_util.tree_flatten_with_path(params)[0], flat_labels):
    n = math.prod(leaf.shape)
    if label == FROZEN:
      frozen += n
      continue
    axis = _expert_axis(path, leaf)
    if axis is not None and experts:
      k = sum(1 for e in experts if e < leaf.shape[axis])
      n_frozen = n // leaf.shape[axis] * k
      frozen += n_frozen
      n -= n_frozen
    trainable += n
  return trainable, frozen


def describe_counts(trainable: int, frozen: int) -> str:
  total = max(trainable + frozen, 1)
  return (f"parameters: {trainable:,} trainable, {frozen:,} frozen "
          f"({100.0 * trainable / total:.1f}% trainable)")


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


def make_optimizer(train_cfg, params, freeze_patterns: list[str], *, frozen_experts=None,
                   verbose: bool = True):
  """Returns (optax transform, labels tree). Clipping sees only trainable gradients.

  freeze_patterns: regexes and/or "preset:NAME" items; frozen_experts: expert ids frozen in every
  MoE layer, added to a preset's (None: train_cfg.freeze_experts). verbose prints the trainable
  and frozen parameter counts (process 0)."""
  if frozen_experts is None:
    raw = getattr(train_cfg, "freeze_experts", "") or ""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    frozen_experts = tuple(int(x) for x in items if str(x).strip())
  patterns, experts = expand_freeze(params, list(freeze_patterns), frozen_experts)
  user = [p for p in freeze_patterns if not p.startswith("preset:")]
  labels = freeze_labels(params, patterns)
  if user:
    freeze_labels(params, user, require_match=True)
  adamw = optax.chain(
      zero_expert_slices(experts),
      optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(lr_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                  weight_decay=train_cfg.weight_decay, mask=decay_mask),
      zero_expert_slices(experts),
  )
  tx = optax.multi_transform({TRAINABLE: adamw, FROZEN: optax.set_to_zero()}, labels)
  if verbose and jax.process_index() == 0:
    trainable, frozen = param_counts(params, labels, experts)
    extra = f"; experts {list(experts)} frozen in every MoE layer" if experts else ""
    _log.info(describe_counts(trainable, frozen) + extra)
  return tx, labels
