"""Configs: defaults, validation before any compute, and derived values.

Config files (configs/*.py) are Python with `get_config(arg=None)` returning a ConfigDict built on
`base_config()`. A config is code: load only configs you trust. `validate()` checks everything
that can be checked without compute and raises ConfigError naming the key and the fix.
"""
from __future__ import annotations

import json
import math

import ml_collections

from medmoe_jax import languages as langs
from medmoe_jax.model.spec import ModelSpec, MoESpec, parse_moe_layers, segments_for
from medmoe_jax.presets import MODEL_SIZES

MESH_AXES = ("data", "fsdp", "expert", "tensor")
SAMPLE_LANGUAGES = ("en", "zh", "fr", "hi", "es", "ar", "ru", "ja", "ko", "de", "it", "pt",
                    "vi", "th", "sw", "ha", "mg", "ceb", "he", "uk")


class ConfigError(ValueError):
  """A config value is wrong; the message names the key and what to do."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "post_moe"
  c.seed = 0
  c.size = "tiny"

  c.model = ml_collections.ConfigDict(dict(
      MODEL_SIZES["tiny"], head_dim=0,  # 0: d_model // num_heads
      qkv_bias=True, init_std=0.02, dtype="float32", param_dtype="float32", remat="none"))

  c.moe = ml_collections.ConfigDict(dict(
      layers="last:2",          # "last:N" | "first:N" | "all" | "none" | "every:K" | "2,3"
      num_experts=7, top_k=2,
      d_ff=0,                   # 0: same as model.d_ff (upcycled experts are full-size copies)
      norm_topk=False,          # Apollo-MoE: no renormalisation of the top-k weights
      language_routing="hybrid",  # "hybrid" (Apollo hybrid-k) | "hard" | "none"
      router_init_std=0.02,
      backend="auto",           # "auto" (= dropless) | "dropless" | "capacity" | "dense"
      grouped_matmul="auto",    # dropless kernel: "auto" | "chunked" (CPU) | "megablox" (TPU) | "ragged_dot"
      # Capacity backend only. Hybrid-k sends a whole single-language row to one family expert,
      # so a per-row capacity below E/k drops tokens; 4.0 drops none at 7 experts top-2.
      capacity_factor_train=4.0, capacity_factor_eval=4.0, jitter=0.0,
      lb_loss_weight=0.0, z_loss_weight=0.0, lpr_loss_weight=0.0))

  c.languages = ml_collections.ConfigDict(dict(
      table="apollo50",         # "apollo50" | "glottolog" | "major12"
      assignment="family",      # "family" | "language"
      use=list(SAMPLE_LANGUAGES),
      original=[],              # MoE-LPR: languages routed to the frozen expert 0 by the LPR loss
      paper_ne_alias=False))
  c.languages.custom_families = ml_collections.ConfigDict()  # code -> family name

  c.data = ml_collections.ConfigDict(dict(
      sources="sample",         # "sample" or comma-separated JSONL paths/globs
      data_dir="",              # where built ArrayRecord datasets live; "" = <workdir>/../data
      tokenizer="sample",       # "sample" (shipped sentencepiece) or a .model path
      seq_len=256, batch_size=8, temperature=1.0))

  c.train = ml_collections.ConfigDict(dict(
      steps=300, lr=3e-3, warmup_frac=0.03, min_lr_ratio=0.1, weight_decay=0.1,
      b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0,
      freeze="",                # comma-separated regexes over param paths ("a/b/c")
      log_every=10, checkpoint_every=100, keep_checkpoints=3, async_checkpoint=True))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
  return c


def apply_size(c: ml_collections.ConfigDict, size: str) -> None:
  if size not in MODEL_SIZES:
    raise ConfigError(f"unknown size {size!r}; choose one of {sorted(MODEL_SIZES)}")
  c.size = size
  c.model.update(MODEL_SIZES[size])


def _err(key: str, msg: str) -> ConfigError:
  return ConfigError(f"config.{key}: {msg}")


def _csv(value) -> list[str]:
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  return [v.strip() for v in str(value).split(",") if v.strip()]


def language_list(c) -> list[str]:
  return _csv(c.languages.use)


def expert_assignment(c) -> langs.ExpertAssignment:
  custom = dict(c.languages.custom_families) if c.languages.custom_families else None
  try:
    return langs.expert_assignment(c.languages.table, c.languages.assignment, language_list(c),
                                   custom_families=custom,
                                   paper_ne_alias=bool(c.languages.paper_ne_alias))
  except ValueError as e:
    raise ConfigError(f"config.languages: {e}") from None


def mesh_shape(c, num_devices: int) -> dict[str, int]:
  """Resolve the one -1 axis (at most one) so the mesh covers all devices."""
  shape = {a: int(c.mesh[a]) for a in MESH_AXES}
  unknown = [a for a, v in shape.items() if v == -1]
  if len(unknown) > 1:
    raise _err("mesh", f"only one axis may be -1, got {unknown}")
  if any(v == 0 or v < -1 for v in shape.values()):
    raise _err("mesh", f"axis sizes must be positive or -1, got {shape}")
  fixed = math.prod(v for v in shape.values() if v != -1)
  if unknown:
    if num_devices % fixed:
      raise _err("mesh", f"fixed axes {shape} multiply to {fixed}, which does not divide the "
                 f"{num_devices} devices; change config.mesh so the product divides {num_devices}")
    shape[unknown[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise _err("mesh", f"{shape} uses {fixed} devices but {num_devices} are present; set one "
               "axis to -1 or make the product equal the device count")
  return shape


def validate(c, num_devices: int | None = None) -> None:
  """Raise ConfigError on the first problem found. Cheap: no JAX compute."""
  m, moe, d, t = c.model, c.moe, c.data, c.train
  for key in ("d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff", "vocab_size"):
    if int(m[key]) <= 0:
      raise _err(f"model.{key}", f"must be positive, got {m[key]}")
  if m.head_dim == 0 and m.d_model % m.num_heads:
    raise _err("model.num_heads", f"{m.num_heads} heads do not divide d_model={m.d_model}; "
               "choose a divisor or set config.model.head_dim explicitly")
  if m.num_heads % m.num_kv_heads:
    raise _err("model.num_kv_heads", f"{m.num_kv_heads} kv heads must divide num_heads="
               f"{m.num_heads} (grouped-query attention)")
  head_dim = m.head_dim or m.d_model // m.num_heads
  if head_dim % 2:
    raise _err("model.head_dim", f"RoPE needs an even head_dim, got {head_dim}")
  for key in ("dtype", "param_dtype"):
    if m[key] not in ("float32", "bfloat16", "float16"):
      raise _err(f"model.{key}", f"{m[key]!r} is not one of float32, bfloat16, float16")
  if m.remat not in ("none", "full", "save_dots"):
    raise _err("model.remat", f"{m.remat!r}; use 'none', 'full' or 'save_dots'")
  try:
    moe_layers = parse_moe_layers(moe.layers, m.num_layers)
  except ValueError as e:
    raise _err("moe.layers", str(e)) from None
  if moe_layers:
    if moe.num_experts < 1:
      raise _err("moe.num_experts", f"must be >= 1, got {moe.num_experts}")
    if not 1 <= moe.top_k <= moe.num_experts:
      raise _err("moe.top_k", f"top_k={moe.top_k} must be in [1, num_experts={moe.num_experts}]; "
                 "lower config.moe.top_k or raise config.moe.num_experts")
    if moe.language_routing not in ("hybrid", "hard", "none"):
      raise _err("moe.language_routing", f"{moe.language_routing!r}; use 'hybrid', 'hard' or 'none'")
    if moe.backend not in ("auto", "dropless", "capacity", "dense"):
      raise _err("moe.backend", f"{moe.backend!r}; use 'auto', 'dropless', 'capacity' or 'dense'")
    if moe.grouped_matmul not in ("auto", "chunked", "megablox", "ragged_dot"):
      raise _err("moe.grouped_matmul", f"{moe.grouped_matmul!r}; use 'auto', 'chunked', "
                 "'megablox' or 'ragged_dot'")
    for key in ("capacity_factor_train", "capacity_factor_eval"):
      if moe[key] <= 0:
        raise _err(f"moe.{key}", f"must be > 0, got {moe[key]}")
  assignment = expert_assignment(c)  # raises on unknown languages / missing families
  # Experts beyond the language experts are allowed (never forced; e.g. padding 7 family
  # experts to 8 so they shard evenly over an expert axis of 4).
  if moe_layers and moe.language_routing != "none" and assignment.num_experts > moe.num_experts:
    raise _err("moe.num_experts", f"{moe.num_experts} experts, but table "
               f"{c.languages.table!r} with assignment {c.languages.assignment!r} defines "
               f"{assignment.num_experts} language experts ({', '.join(assignment.expert_names)}); "
               f"set config.moe.num_experts>={assignment.num_experts} or language_routing='none'")
  unknown_orig = [x for x in _csv(c.languages.original) if x not in language_list(c)]
  if unknown_orig:
    raise _err("languages.original", f"{unknown_orig[0]!r} is not in config.languages.use")
  if moe.lpr_loss_weight > 0 and not _csv(c.languages.original):
    raise _err("languages.original", "the LPR loss needs original languages; list them here")
  if d.seq_len < 2 or d.batch_size < 1:
    raise _err("data", f"seq_len must be >= 2 and batch_size >= 1, got {d.seq_len}, {d.batch_size}")
  if t.steps < 1:
    raise _err("train.steps", f"must be >= 1, got {t.steps}")
  if not 0 <= t.warmup_frac < 1:
    raise _err("train.warmup_frac", f"must be in [0, 1), got {t.warmup_frac}")
  if num_devices is not None:
    shape = mesh_shape(c, num_devices)
    batch_shards = shape["data"] * shape["fsdp"] * shape["expert"]
    if d.batch_size % batch_shards:
      raise _err("data.batch_size", f"{d.batch_size} is not divisible by the batch shards "
                 f"data*fsdp*expert={batch_shards}; make it a multiple of {batch_shards}")
    if moe_layers and moe.num_experts % shape["expert"]:
      raise _err("mesh.expert", f"{shape['expert']} expert shards do not divide "
                 f"num_experts={moe.num_experts}; use a divisor of {moe.num_experts}")
    tp = shape["tensor"]
    for key, val in (("model.num_kv_heads", m.num_kv_heads), ("model.num_heads", m.num_heads),
                     ("model.d_ff", m.d_ff)):
      if val % tp:
        raise _err("mesh.tensor", f"tensor={tp} does not divide {key}={val}")
    if m.d_model % shape["fsdp"]:
      raise _err("mesh.fsdp", f"fsdp={shape['fsdp']} does not divide model.d_model={m.d_model}")


def model_spec(c) -> ModelSpec:
  """The model's plain spec from a validated config."""
  m, moe = c.model, c.moe
  moe_layers = parse_moe_layers(moe.layers, m.num_layers)
  lang_list = language_list(c)
  assignment = expert_assignment(c)
  original = set(_csv(c.languages.original))
  moe_spec = MoESpec(
      num_experts=moe.num_experts, top_k=moe.top_k, d_ff=moe.d_ff or m.d_ff,
      norm_topk=bool(moe.norm_topk), language_routing=moe.language_routing,
      lang_to_expert=tuple(assignment.lang_to_expert) if moe.language_routing != "none" else (),
      lang_is_original=tuple(int(x in original) for x in lang_list) if original else (),
      router_init_std=moe.router_init_std, backend=moe.backend,
      grouped_matmul=moe.grouped_matmul,
      capacity_factor_train=moe.capacity_factor_train,
      capacity_factor_eval=moe.capacity_factor_eval, jitter=moe.jitter)
  return ModelSpec(
      vocab_size=m.vocab_size, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads,
      num_kv_heads=m.num_kv_heads, head_dim=m.head_dim or m.d_model // m.num_heads, d_ff=m.d_ff,
      qkv_bias=bool(m.qkv_bias), tie_embeddings=bool(m.tie_embeddings), rope_theta=m.rope_theta,
      norm_eps=m.norm_eps, init_std=m.init_std, dtype=m.dtype, param_dtype=m.param_dtype,
      remat=m.remat, segments=segments_for(m.num_layers, moe_layers), moe=moe_spec)


def to_json(c) -> str:
  return json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str)
