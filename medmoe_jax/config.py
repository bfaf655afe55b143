"""Configs: defaults, validation before any compute, and derived values.

Config files (configs/*.py) are Python with `get_config(arg=None)` returning a ConfigDict built on
`base_config()`. A config is code: load only configs you trust. `validate()` checks everything
that can be checked without compute and raises ConfigError naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re

import ml_collections

from medmoe_jax import languages as langs
from medmoe_jax.data import specs as data_specs
from medmoe_jax.errors import ConfigError
from medmoe_jax.model.spec import (BACKENDS, BATCH_MESH_AXES, GROUPED_MATMULS, LANGUAGE_ROUTING,
                                   MESH_AXES, ModelSpec, MoESpec, parse_moe_layers, segments_for)
from medmoe_jax.presets import MODEL_SIZES, PAPER_MESH, PAPER_TRAINING
from medmoe_jax.training.spec import TrainSpec

SAMPLE_LANGUAGES = ("en", "zh", "fr", "hi", "es", "ar", "ru", "ja", "ko", "de", "it", "pt",
                    "vi", "th", "sw", "ha", "mg", "ceb", "he", "uk")


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "post_moe"
  c.seed = 0
  c.size = "tiny"

  c.model = ml_collections.ConfigDict(dict(
      MODEL_SIZES["tiny"], head_dim=0,  # 0: d_model // num_heads
      qkv_bias=True, init_std=0.02, dtype="float32", param_dtype="float32", remat="none",
      # Layers per iteration of each segment's scan: 1 compiles once per segment whatever the
      # depth; 0 unrolls fully (no stacked activation buffers: 6% faster at the CPU benchmark
      # shape, BENCHMARKS.md, at the price of compile time growing with depth).
      scan_unroll=1,
      # Sequence positions per chunk of the LM head + cross-entropy (0 = whole sequence): the
      # loss holds [batch, loss_chunk, vocab] float32 logits at a time, never [batch, seq, vocab].
      loss_chunk=512,
      # Longest position RoPE is meant for (Qwen2's pretraining context); data.seq_len above it
      # is refused. Raise it together with rope_theta when extending the context.
      max_position_embeddings=32768,
      qk_norm=False,            # Qwen3: per-head RMSNorm on q and k before RoPE
      # RoPE frequency scaling (transformers' rope_parameters): "default" (none), "linear"
      # (factor), "llama3" (Llama 3.1+: factor, low/high_freq_factor, original context).
      rope_scaling=dict(rope_type="default", factor=1.0, low_freq_factor=1.0,
                        high_freq_factor=4.0, original_max_position_embeddings=8192)))

  c.moe = ml_collections.ConfigDict(dict(
      layers="last:2",          # "last:N" | "first:N" | "all" | "none" | "every:K" | "2,3"
      num_experts=7, top_k=2,
      d_ff=0,                   # 0: same as model.d_ff (upcycled experts are full-size copies)
      norm_topk=False,          # Apollo-MoE: no renormalisation of the top-k weights
      # "hybrid" (Apollo hybrid-k) | "hard" (own expert, weight 1, also at inference: needs
      # the language tag) | "specific" (Apollo-MoE's language-specific code: own expert with
      # weight 1 in training, the router's top-k with softmax weights at inference) | "none"
      language_routing="hybrid",
      # Router weights [D, E]: "normal" (std router_init_std) or "xavier_normal" (std
      # sqrt(2 / (D + E)), torch's xavier_normal_, as MoE-LPR's code initialises its routers).
      router_init="normal", router_init_std=0.02,
      backend="auto",           # "auto" (= dropless) | "dropless" | "capacity" | "dense"
      grouped_matmul="auto",    # dropless kernel: "auto" | "chunked" (CPU) | "megablox" (TPU) | "tokamax" (GPU) | "ragged_dot"
      # Capacity backend only. Hybrid-k sends a whole single-language row to one family expert,
      # so a per-row capacity below E/k drops tokens; 4.0 drops none at 7 experts top-2.
      capacity_factor_train=4.0, capacity_factor_eval=4.0, jitter=0.0,
      lb_loss_weight=0.0, z_loss_weight=0.0, lpr_loss_weight=0.0,
      # The units of lb_loss_weight: "choice" = on our lb_loss, the Switch loss per choice (1
      # when balanced, as logged); "hf" = on Hugging Face's load_balancing_loss_func (MoE-LPR's,
      # Mixtral's, Qwen2-MoE's: summed over the k choices, k when balanced), so a weight from a
      # paper's HF script means the same here (the trainer then weights lb_loss by w * top_k).
      lb_loss_units="choice",
      # A shared expert in every MoE layer (Qwen2-MoE's): its SwiGLU width (0 = none) and a
      # per-token sigmoid gate, Linear(d_model -> 1), on its output. Upcycling starts it fresh.
      shared_expert_d_ff=0, shared_expert_gate=False,
      # MoE-CT: M MoE blocks appended after the last (frozen) base block, fused with the base
      # hidden state by a gate that starts closed (our interpretation; see model/transformer.py).
      appended=0))

  c.languages = ml_collections.ConfigDict(dict(
      table="apollo50",         # "apollo50" | "glottolog" | "major12" | "custom" (custom_families only)
      assignment="family",      # "family" | "language"
      use=tuple(SAMPLE_LANGUAGES),  # a tuple so --config.languages.use="('en','zh')" works
      original=(),              # MoE-LPR: languages routed to the frozen expert 0 by the LPR loss
      # `ne` in table apollo50: the official code (and its data) put `ne` in the Altaic family
      # for the paper's "Mongolian (Ne)", although `ne` is Nepali's ISO code. "auto": accept it
      # there with a warning when languages.use holds `ne`; True: always; False: refuse `ne`.
      paper_ne_alias=ml_collections.FieldReference("auto", field_type=object)))
  c.languages.custom_families = ml_collections.ConfigDict()  # code -> family name

  c.data = ml_collections.ConfigDict(dict(
      # "sample", comma-separated paths/globs, or a list of paths and source dicts
      # {paths, name, lang, detect, weight, kind} (see medmoe_jax/data/specs.py)
      sources=ml_collections.FieldReference("sample", field_type=object),
      data_dir="",              # where built ArrayRecord datasets live; "" = <workdir>/data
      tokenizer="sample",       # "sample", a sentencepiece .model, a tokenizer.json or HF model dir
      # Supervised records (question/answer, chat turns): "apollo" = the official Apollo-MoE
      # `User:{q}\nAssistant:{a}<eos>`, question masked; "plain" = turns joined by "\n";
      # "hf" = the HF tokenizer directory's own chat_template (data/chat.py).
      chat_template="apollo",
      seq_len=256, batch_size=8,
      temperature=1.0,          # language sampling p_l ~ n_l^(1/T); larger T favours minor ones
      on_error="raise",         # bad input: "raise" (error naming file/line/field) | "skip" (count)
      validation_every=10,      # record i of each file with i % N == 0 is validation; 0 = none
      packing="first_fit",      # "first_fit" (documents whole, rows padded) | "concat" (rows full)
      num_threads=2, prefetch=2,  # pipeline read/tokenize threads; batches prepared ahead
      # MoE-LPR stage 2: share of sampled documents drawn from config.languages.original (the
      # replay data); 0 = plain temperature mixture over config.languages.use.
      replay_share=0.0,
      # > 0: each language's first N documents only (LLaMA-Factory's max_samples per dataset;
      # MoE-LPR stage 2 uses 50K of every new and original language, mixed by count).
      max_docs_per_language=0))

  c.train = ml_collections.ConfigDict(dict(
      steps=300, lr=3e-3, warmup_frac=0.03, min_lr_ratio=0.1, weight_decay=0.1,
      b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0,
      freeze="",                # comma-separated regexes over param paths ("a/b/c") and/or
                                # method presets "preset:NAME" (training/optim.py FREEZE_PRESETS)
      freeze_experts="",        # expert ids whose slices of every MoE layer stay frozen ("0")
      log_every=10, checkpoint_every=100, keep_checkpoints=3, async_checkpoint=True,
      # NaN/Inf loss or grad norm: "stop" (name the step, keep the last good checkpoint) or
      # "skip" (drop that update inside the jitted step and count it in metrics).
      on_nonfinite="stop"))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))

  # Initialise a fresh run from a checkpoint (medmoe_jax/upcycle.py). `from` is a Python keyword,
  # which ml_collections' flag parser cannot take in a dotted path, so `from_` is the same field
  # (one FieldReference): in code c.upcycle["from"] or c.upcycle.from_, on the command line
  # --config.upcycle.from_=PATH.
  source = ml_collections.FieldReference("", field_type=str)
  c.upcycle = ml_collections.ConfigDict({
      "method": "none",         # "none" (load params as they are) | "apollo" | "lpr" | "ct"
      # A shared expert (moe.shared_expert_d_ff) at upcycling: "fresh" (new init) or "dense" (a
      # copy of the layer's dense FFN, as ApolloMoE's conversion script; its gate stays fresh).
      "shared_expert": "fresh",
      "from": source,           # workdir, checkpoints dir or step dir; "" = random init
      "from_": source,
  })
  return c


def apply_size(c: ml_collections.ConfigDict, size: str) -> None:
  if size not in MODEL_SIZES:
    raise ConfigError(f"unknown size {size!r}; choose one of {sorted(MODEL_SIZES)}")
  c.size = size
  c.model.update(MODEL_SIZES[size])


def apply_paper_training(c: ml_collections.ConfigDict) -> None:
  """For the real sizes: the paper's training settings (bf16, 4096-token rows, 32 rows a step,
  lr 1e-4, remat), a mesh that fits the recommended hardware (presets.PAPER_MESH) and the base
  model's own tokenizer (set config.data.tokenizer to its path)."""
  if c.size in ("tiny", "small"):
    return
  c.data.seq_len = PAPER_TRAINING["seq_len"]
  c.data.batch_size = PAPER_TRAINING["batch_size"]
  c.train.lr = PAPER_TRAINING["lr"]
  c.model.dtype = PAPER_TRAINING["dtype"]
  c.model.remat = PAPER_TRAINING["remat"]
  c.data.tokenizer = ""
  c.train.steps = 20000
  c.train.checkpoint_every = 1000
  c.mesh.update(PAPER_MESH.get(c.size, {}))


def _err(key: str, msg: str) -> ConfigError:
  return ConfigError(f"config.{key}: {msg}")


def _one_of(allowed) -> str:
  """('a', 'b', 'c') -> "'a', 'b' or 'c'"."""
  quoted = [repr(a) for a in allowed]
  return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _csv(value) -> list[str]:
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  return [v.strip() for v in str(value).split(",") if v.strip()]


def language_list(c) -> list[str]:
  return _csv(c.languages.use)


NE_WARNING = ("config.languages: 'ne' is ISO 639-1 for Nepali; as the official Apollo-MoE code "
              "does, it is read as the paper's 'Mongolian (Ne)' in the Altaic family (set "
              "config.languages.paper_ne_alias=False to refuse it, or use 'mn')")


def paper_ne_alias(c) -> bool:
  """Whether `ne` joins apollo50's Altaic family (config.languages.paper_ne_alias)."""
  value = c.languages.paper_ne_alias
  if value == "auto":
    custom = dict(c.languages.custom_families) if c.languages.custom_families else {}
    return (c.languages.table == "apollo50" and "ne" in language_list(c) and "ne" not in custom)
  if not isinstance(value, bool):
    raise _err("languages.paper_ne_alias", f"{value!r}; use 'auto', True or False")
  return value


def expert_assignment(c) -> langs.ExpertAssignment:
  custom = dict(c.languages.custom_families) if c.languages.custom_families else None
  alias = paper_ne_alias(c)
  try:
    out = langs.expert_assignment(c.languages.table, c.languages.assignment, language_list(c),
                                  custom_families=custom, paper_ne_alias=alias)
  except ValueError as e:
    raise ConfigError(f"config.languages: {e}") from None
  if alias and "ne" in language_list(c) and not _NE_WARNED:
    _NE_WARNED.append(True)  # once per process: validation calls this several times
    logging.warning(NE_WARNING)
  return out


_NE_WARNED: list = []


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


@dataclasses.dataclass(frozen=True)
class _Checked:
  """What validation derives on its way, so that resolve() derives nothing twice."""
  languages: list
  moe_layers: tuple
  assignment: langs.ExpertAssignment
  sources: list
  mesh_shape: dict


def validate(c, num_devices: int | None = None) -> None:
  """Raise ConfigError on the first problem found. Cheap: no JAX compute."""
  _check(c, num_devices)


def _check(c, num_devices: int | None) -> _Checked:
  missing = [k for k in ("model", "moe", "data", "train", "mesh") if k not in c]
  if missing:
    raise ConfigError(f"config: not a training config (no {', '.join(missing)}); an eval config "
                      "such as configs/eval.py goes to python -m medmoe_jax.eval")
  m, moe, d, t = c.model, c.moe, c.data, c.train
  if not _SAFE_NAME.match(str(c.name)) or set(str(c.name)) <= {"."}:
    # The default workdir is workdir/<name>: a name with "/" or ".." would write elsewhere.
    raise _err("name", f"{c.name!r} must be letters, digits, '_', '-' or '.' (it names the "
               "default workdir); no path separators")
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
  if not isinstance(m.scan_unroll, int) or isinstance(m.scan_unroll, bool) or m.scan_unroll < 0:
    raise _err("model.scan_unroll", f"{m.scan_unroll!r}; use an int >= 1 (layers per scan step) "
               "or 0 (fully unrolled)")
  loss_chunk = m.get("loss_chunk", 512)
  if not isinstance(loss_chunk, int) or isinstance(loss_chunk, bool) or loss_chunk < 0:
    raise _err("model.loss_chunk", f"{loss_chunk!r}; use an int >= 1 (sequence positions per "
               "chunk of the LM head and loss) or 0 (the whole sequence at once)")
  try:
    moe_layers = parse_moe_layers(moe.layers, m.num_layers)
  except ValueError as e:
    raise _err("moe.layers", str(e)) from None
  appended = int(moe.get("appended", 0))
  if appended < 0:
    raise _err("moe.appended", f"must be >= 0, got {appended}")
  has_moe = bool(moe_layers) or appended > 0
  if has_moe:
    if moe.num_experts < 1:
      raise _err("moe.num_experts", f"must be >= 1, got {moe.num_experts}")
    if moe.get("lb_loss_units", "choice") not in ("choice", "hf"):
      raise _err("moe.lb_loss_units", f"{moe.lb_loss_units!r}; use 'choice' or 'hf'")
    if moe.get("router_init", "normal") not in ("normal", "xavier_normal"):
      raise _err("moe.router_init", f"{moe.router_init!r}; use 'normal' or 'xavier_normal'")
    if not 1 <= moe.top_k <= moe.num_experts:
      raise _err("moe.top_k", f"top_k={moe.top_k} must be in [1, num_experts={moe.num_experts}]; "
                 "lower config.moe.top_k or raise config.moe.num_experts")
    for key, allowed in (("language_routing", LANGUAGE_ROUTING), ("backend", BACKENDS),
                         ("grouped_matmul", GROUPED_MATMULS)):
      if moe[key] not in allowed:
        raise _err(f"moe.{key}", f"{moe[key]!r}; use {_one_of(allowed)}")
    for key in ("capacity_factor_train", "capacity_factor_eval"):
      if moe[key] <= 0:
        raise _err(f"moe.{key}", f"must be > 0, got {moe[key]}")
    shared = moe.get("shared_expert_d_ff", 0)
    if not isinstance(shared, int) or isinstance(shared, bool) or shared < 0:
      raise _err("moe.shared_expert_d_ff", f"{shared!r}; use an int >= 0 (0 = no shared expert)")
    if moe.get("shared_expert_gate", False) and not shared:
      raise _err("moe.shared_expert_gate", "gates the shared expert, but "
                 "config.moe.shared_expert_d_ff=0 (none); set a width or drop the gate")
  assignment = expert_assignment(c)  # raises on unknown languages / missing families
  # Experts beyond the language experts are allowed (never forced; e.g. padding 7 family
  # experts to 8 so they shard evenly over an expert axis of 4).
  if has_moe and moe.language_routing != "none" and assignment.num_experts > moe.num_experts:
    raise _err("moe.num_experts", f"{moe.num_experts} experts, but table "
               f"{c.languages.table!r} with assignment {c.languages.assignment!r} defines "
               f"{assignment.num_experts} language experts ({', '.join(assignment.expert_names)}); "
               f"set config.moe.num_experts>={assignment.num_experts} or language_routing='none'")
  unknown_orig = [x for x in _csv(c.languages.original) if x not in language_list(c)]
  if unknown_orig:
    raise _err("languages.original", f"{unknown_orig[0]!r} is not in config.languages.use")
  if moe.lpr_loss_weight > 0 and not _csv(c.languages.original):
    raise _err("languages.original", "the LPR loss needs original languages; list them here")
  _validate_methods(c, moe_layers, appended)
  if d.seq_len < 2 or d.batch_size < 1:
    raise _err("data", f"seq_len must be >= 2 and batch_size >= 1, got {d.seq_len}, {d.batch_size}")
  rs = m.get("rope_scaling") or {}
  if rs.get("rope_type", "default") not in ROPE_SCALING_KEYS:
    raise _err("model.rope_scaling.rope_type", f"{rs.get('rope_type')!r} is not implemented; use "
               f"one of {', '.join(ROPE_SCALING_KEYS)}")
  if rs.get("rope_type", "default") != "default" and not float(rs.get("factor", 0)) > 0:
    raise _err("model.rope_scaling.factor", f"must be > 0, got {rs.get('factor')}")
  if not m.rope_theta > 0:
    raise _err("model.rope_theta", f"RoPE base must be > 0, got {m.rope_theta}")
  if d.seq_len > m.max_position_embeddings:
    raise _err("data.seq_len", f"{d.seq_len} exceeds config.model.max_position_embeddings="
               f"{m.max_position_embeddings}, the longest position RoPE is set up for; lower "
               "seq_len, or raise max_position_embeddings (and rope_theta) to extend the context")
  sources = _validate_data(c)
  if t.steps < 1:
    raise _err("train.steps", f"must be >= 1, got {t.steps}")
  if not 0 <= t.warmup_frac < 1:
    raise _err("train.warmup_frac", f"must be in [0, 1), got {t.warmup_frac}")
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if int(t[key]) < 1:
      raise _err(f"train.{key}", f"must be >= 1, got {t[key]}")
  if t.on_nonfinite not in ("stop", "skip"):
    raise _err("train.on_nonfinite", f"{t.on_nonfinite!r}; use 'stop' or 'skip'")
  shape = {}
  if num_devices is not None:
    shape = mesh_shape(c, num_devices)
    batch_shards = math.prod(shape[a] for a in BATCH_MESH_AXES)
    if d.batch_size % batch_shards:
      raise _err("data.batch_size", f"{d.batch_size} is not divisible by the batch shards "
                 f"data*fsdp*expert={batch_shards}; make it a multiple of {batch_shards}")
    if has_moe and moe.num_experts % shape["expert"]:
      raise _err("mesh.expert", f"{shape['expert']} expert shards do not divide "
                 f"num_experts={moe.num_experts}; use a divisor of {moe.num_experts}")
    tp = shape["tensor"]
    for key, val in (("model.num_kv_heads", m.num_kv_heads), ("model.num_heads", m.num_heads),
                     ("model.d_ff", m.d_ff),
                     ("moe.shared_expert_d_ff", moe.get("shared_expert_d_ff", 0) if has_moe else 0)):
      if val % tp:
        raise _err("mesh.tensor", f"tensor={tp} does not divide {key}={val}")
    if m.d_model % shape["fsdp"]:
      raise _err("mesh.fsdp", f"fsdp={shape['fsdp']} does not divide model.d_model={m.d_model}")
  return _Checked(language_list(c), tuple(moe_layers), assignment, sources, shape)


def _validate_data(c) -> list[data_specs.SourceSpec]:
  d = c.data
  if d.on_error not in ("raise", "skip"):
    raise _err("data.on_error", f"{d.on_error!r}; use 'raise' or 'skip'")
  if not d.temperature > 0:
    raise _err("data.temperature", f"must be > 0, got {d.temperature}")
  if d.packing not in ("first_fit", "concat"):
    raise _err("data.packing", f"{d.packing!r}; use 'first_fit' or 'concat'")
  from medmoe_jax.data import chat  # pylint: disable=g-import-not-at-top
  if d.get("chat_template", "apollo") not in chat.TEMPLATES:
    raise _err("data.chat_template", f"{d.chat_template!r}; use one of {', '.join(chat.TEMPLATES)}")
  if d.validation_every < 0:
    raise _err("data.validation_every", f"must be >= 0, got {d.validation_every}")
  if int(d.get("max_docs_per_language", 0)) < 0:
    raise _err("data.max_docs_per_language", f"must be >= 0, got {d.max_docs_per_language}")
  if d.num_threads < 0 or d.prefetch < 0:
    raise _err("data", f"num_threads and prefetch must be >= 0, got {d.num_threads}, {d.prefetch}")
  try:
    return source_specs(c)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _custom_languages(c) -> tuple[str, ...]:
  return tuple(c.languages.custom_families) if c.languages.custom_families else ()


def source_specs(c) -> list[data_specs.SourceSpec]:
  """config.data.sources parsed and checked; ValueError names `config.data.sources[i].key`."""
  try:
    out = data_specs.parse_sources(c.data.sources)
    data_specs.check_sources(out, data_specs.KnownLanguages(
        [*_custom_languages(c), *language_list(c)]))
  except ValueError as e:
    raise ValueError(f"config.data.sources{'' if str(e).startswith('[') else ': '}{e}") from None
  return out


def data_spec(c, workdir: str, *, sources=None) -> data_specs.DataSpec:
  """The data package's spec of a validated config. Built sources live in config.data.data_dir,
  or <workdir>/data: a run writes nothing outside its workdir unless told to (set
  data.data_dir to share one build between runs)."""
  d = c.data
  data_dir = os.path.expanduser(d.data_dir) if d.data_dir else os.path.join(
      os.path.abspath(workdir), "data")
  return data_specs.DataSpec(
      name=str(c.name), sources=tuple(source_specs(c) if sources is None else sources),
      languages=tuple(language_list(c)), custom_languages=_custom_languages(c), data_dir=data_dir, tokenizer=str(d.tokenizer),
      seq_len=int(d.seq_len), batch_size=int(d.batch_size), seed=int(c.seed),
      temperature=float(d.temperature), on_error=d.on_error,
      validation_every=int(d.validation_every), packing=d.packing,
      num_threads=int(d.num_threads), prefetch=int(d.prefetch), replay=replay(c),
      chat_template=d.get("chat_template", "apollo"),
      max_docs_per_language=int(d.get("max_docs_per_language", 0)))


UPCYCLE_METHODS = ("none", "apollo", "lpr", "ct")


def freeze_items(c) -> list[str]:
  """config.train.freeze as a list: regexes and "preset:NAME" entries."""
  return _csv(c.train.freeze)


def frozen_experts(c) -> tuple[int, ...]:
  try:
    return tuple(sorted({int(x) for x in _csv(c.train.get("freeze_experts", ""))}))
  except ValueError:
    raise _err("train.freeze_experts", f"{c.train.freeze_experts!r} is not a comma-separated "
               "list of expert ids, e.g. '0'") from None


def _validate_methods(c, moe_layers, appended: int) -> None:
  """Upcycling, freezing and replay: the checks that tie a method's keys together."""
  import re

  from medmoe_jax.training.optim import FREEZE_PRESETS  # light: names and regex builders only

  up = c.get("upcycle", None)
  method = up.method if up is not None else "none"
  if method not in UPCYCLE_METHODS:
    raise _err("upcycle.method", f"{method!r}; use one of {', '.join(UPCYCLE_METHODS)}")
  if method in ("apollo", "lpr"):
    if not moe_layers:
      raise _err("moe.layers", f"upcycle.method={method!r} turns dense FFNs into experts but "
                 "config.moe.layers selects no layer; set e.g. 'last:2' (Apollo) or 'all' (LPR)")
    if appended:
      raise _err("moe.appended", f"upcycle.method={method!r} does not append blocks; set "
                 "config.moe.appended=0 or upcycle.method='ct'")
  if method == "ct" and (appended < 1 or moe_layers):
    raise _err("moe.appended" if appended < 1 else "moe.layers",
               "upcycle.method='ct' keeps every base layer dense and appends MoE blocks: set "
               "config.moe.layers='none' and config.moe.appended>=1")
  if method == "lpr" and c.moe.num_experts < 2:
    raise _err("moe.num_experts", "MoE-LPR keeps the original FFN as expert 0 and trains new "
               "experts beside it; set config.moe.num_experts>=2")
  shared_init = up.get("shared_expert", "fresh") if up is not None else "fresh"
  if shared_init not in ("fresh", "dense"):
    raise _err("upcycle.shared_expert", f"{shared_init!r}; use 'fresh' or 'dense'")
  if shared_init == "dense":
    if method != "apollo":
      raise _err("upcycle.shared_expert", f"'dense' copies the dense FFN at Apollo upcycling; "
                 f"upcycle.method is {method!r}")
    if int(c.moe.get("shared_expert_d_ff", 0)) != int(c.model.d_ff):
      raise _err("upcycle.shared_expert", f"'dense' copies the dense FFN: set "
                 f"config.moe.shared_expert_d_ff={c.model.d_ff} (model.d_ff)")
  for item in freeze_items(c):
    if item.startswith("preset:"):
      name = item.split(":", 1)[1]
      if name not in FREEZE_PRESETS:
        raise _err("train.freeze", f"unknown preset {name!r}; choose one of "
                   f"{', '.join('preset:' + n for n in FREEZE_PRESETS)}")
      if name == "ct" and appended < 1:
        raise _err("train.freeze", "preset:ct trains only the appended MoE blocks, but "
                   "config.moe.appended=0; set config.moe.appended>=1")
    else:
      try:
        re.compile(item)
      except re.error as e:
        raise _err("train.freeze", f"bad regex {item!r}: {e}") from None
  experts = frozen_experts(c)
  if experts:
    if not (moe_layers or appended):
      raise _err("train.freeze_experts", "the model has no MoE layer; leave it empty")
    bad = [e for e in experts if not 0 <= e < c.moe.num_experts]
    if bad:
      raise _err("train.freeze_experts", f"expert {bad[0]} is out of range for "
                 f"moe.num_experts={c.moe.num_experts}")
    if len(experts) == c.moe.num_experts:
      raise _err("train.freeze_experts", "freezes every expert; freeze them with a regex instead")
  share = float(c.data.get("replay_share", 0.0))
  if not 0.0 <= share < 1.0:
    raise _err("data.replay_share", f"must be in [0, 1), got {share}")
  if share > 0:
    original = _csv(c.languages.original)
    if not original:
      raise _err("languages.original", "data.replay_share > 0 replays the original languages; "
                 "list them in config.languages.original")
    if set(original) >= set(language_list(c)):
      raise _err("languages.use", "data.replay_share needs languages besides the original ones "
                 "(the new languages of MoE-LPR)")


def replay(c) -> tuple[tuple[str, ...], float] | None:
  """(replayed languages, their share of the mixture) for the data pipeline, or None."""
  share = float(c.data.get("replay_share", 0.0))
  return (tuple(_csv(c.languages.original)), share) if share > 0 else None


# rope_type -> the model.rope_scaling keys it reads (model/layers.rope_inv_freq).
ROPE_SCALING_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def rope_scaling_spec(m) -> tuple:
  """config.model -> ModelSpec.rope_scaling: () for plain RoPE, else the sorted pairs its type reads."""
  rs = m.get("rope_scaling") or {}
  kind = rs.get("rope_type", "default")
  if kind == "default":
    return ()
  return tuple(sorted([("rope_type", kind)] + [(k, float(rs[k])) for k in ROPE_SCALING_KEYS[kind]]))


def lb_weight_per_choice(c) -> float:
  """moe.lb_loss_weight on our per-choice lb_loss (x top_k when given in HF's units)."""
  w = float(c.moe.lb_loss_weight)
  return w * int(c.moe.top_k) if c.moe.get("lb_loss_units", "choice") == "hf" else w


def lb_weight_hf_units(c) -> float:
  """moe.lb_loss_weight as Hugging Face's router_aux_loss_coef (on its k-summed loss)."""
  w = float(c.moe.lb_loss_weight)
  return w if c.moe.get("lb_loss_units", "choice") == "hf" else w / max(int(c.moe.top_k), 1)


def router_init_std(c) -> float:
  """The routers' init std: moe.router_init_std, or xavier-normal's sqrt(2 / (D + E))."""
  if c.moe.get("router_init", "normal") == "xavier_normal":
    return math.sqrt(2.0 / (c.model.d_model + c.moe.num_experts))
  return float(c.moe.router_init_std)


def model_spec(c, *, moe_layers=None, assignment=None) -> ModelSpec:
  """The model's plain spec from a validated config (moe_layers and the expert assignment
  derived here unless given)."""
  m, moe = c.model, c.moe
  if moe_layers is None:
    moe_layers = parse_moe_layers(moe.layers, m.num_layers)
  lang_list = language_list(c)
  if assignment is None:
    assignment = expert_assignment(c)
  original = set(_csv(c.languages.original))
  moe_spec = MoESpec(
      num_experts=moe.num_experts, top_k=moe.top_k, d_ff=moe.d_ff or m.d_ff,
      norm_topk=bool(moe.norm_topk), language_routing=moe.language_routing,
      lang_to_expert=tuple(assignment.lang_to_expert) if moe.language_routing != "none" else (),
      lang_is_original=tuple(int(x in original) for x in lang_list) if original else (),
      router_init_std=router_init_std(c), backend=moe.backend,
      grouped_matmul=moe.grouped_matmul,
      capacity_factor_train=moe.capacity_factor_train,
      capacity_factor_eval=moe.capacity_factor_eval, jitter=moe.jitter,
      shared_d_ff=int(moe.get("shared_expert_d_ff", 0)),
      shared_gate=bool(moe.get("shared_expert_gate", False)))
  return ModelSpec(
      vocab_size=m.vocab_size, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads,
      num_kv_heads=m.num_kv_heads, head_dim=m.head_dim or m.d_model // m.num_heads, d_ff=m.d_ff,
      qkv_bias=bool(m.qkv_bias), tie_embeddings=bool(m.tie_embeddings), rope_theta=m.rope_theta,
      rope_scaling=rope_scaling_spec(m), qk_norm=bool(m.get("qk_norm", False)),
      norm_eps=m.norm_eps, init_std=m.init_std, dtype=m.dtype, param_dtype=m.param_dtype,
      remat=m.remat, scan_unroll=int(m.scan_unroll), loss_chunk=int(m.get("loss_chunk", 512)), segments=segments_for(m.num_layers, moe_layers, int(moe.get("appended", 0))),
      moe=moe_spec)


@dataclasses.dataclass(frozen=True)
class Run:
  """A config resolved once: every module's own frozen spec, validated together. Modules take
  their part (model, data, train), never the ConfigDict; `config` is kept for config.json."""
  name: str
  seed: int
  languages: tuple[str, ...]      # config.languages.use; the order defines lang_id
  model: ModelSpec                # with .moe
  data: data_specs.DataSpec
  train: TrainSpec
  mesh_shape: dict                # axis -> size, every device covered ({} when not resolved)
  upcycle_method: str = "none"
  upcycle_from: str = ""          # a checkpoint to start a fresh run from; "" = random init
  upcycle_shared_from_dense: bool = False  # upcycle.shared_expert="dense": a copy of the FFN
  expert_names: tuple[str, ...] = ()  # the language assignment's expert id -> name (a family,
                                      # or a language code for per-language experts)
  config: object = dataclasses.field(default=None, compare=False, repr=False)


def train_spec(c) -> TrainSpec:
  t, moe = c.train, c.moe
  return TrainSpec(
      steps=int(t.steps), lr=t.lr, warmup_frac=t.warmup_frac, min_lr_ratio=t.min_lr_ratio,
      weight_decay=t.weight_decay, b1=t.b1, b2=t.b2, eps=t.eps, grad_clip=t.grad_clip,
      freeze=tuple(freeze_items(c)), freeze_experts=frozen_experts(c),
      log_every=int(t.log_every), checkpoint_every=int(t.checkpoint_every),
      keep_checkpoints=int(t.keep_checkpoints), async_checkpoint=bool(t.async_checkpoint),
      on_nonfinite=t.on_nonfinite, lb_loss_weight=lb_weight_per_choice(c),
      z_loss_weight=float(moe.z_loss_weight), lpr_loss_weight=float(moe.lpr_loss_weight))


def resolve(c, *, workdir: str = "", num_devices: int | None = None) -> Run:
  """Validate `c` (ConfigError naming the key on the first problem) and derive every spec once.
  `workdir` places the default data directory; `num_devices` resolves the mesh shape."""
  checked = _check(c, num_devices)
  up = c.get("upcycle", None)
  return Run(
      name=str(c.name), seed=int(c.seed), languages=tuple(checked.languages),
      model=model_spec(c, moe_layers=checked.moe_layers, assignment=checked.assignment),
      data=data_spec(c, workdir, sources=checked.sources), train=train_spec(c),
      mesh_shape=checked.mesh_shape,
      upcycle_method=up.method if up is not None else "none",
      upcycle_from=up["from"] if up is not None else "",
      upcycle_shared_from_dense=up is not None and up.get("shared_expert", "fresh") == "dense",
      expert_names=tuple(checked.assignment.expert_names), config=c)


def to_json(c) -> str:
  return json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str)


def from_json_dict(d: dict) -> ml_collections.ConfigDict:
  """A config written by `to_json` (a workdir's config.json) back into a ConfigDict: defaults
  from base_config() for keys an older file lacks; keys this version does not know are kept."""
  c = base_config()

  def merge(dst, src):
    for k, v in src.items():
      if isinstance(v, dict) and k in dst and isinstance(dst[k], ml_collections.ConfigDict):
        merge(dst[k], v)
      else:
        with dst.ignore_type():
          dst[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v

  merge(c, d)
  return c
