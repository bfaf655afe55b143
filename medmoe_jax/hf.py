"""Hugging Face interop: `python -m medmoe_jax.hf import|export`.

  python -m medmoe_jax.hf import --hf_dir DIR --out OUT
      A local HF model directory (config.json + *.safetensors, sharded index supported; Qwen2,
      Llama, and Qwen2-MoE such as our own exports) -> OUT/checkpoints/0 (an Orbax checkpoint of
      our model, params only), OUT/config.json + OUT/config.py (a config with its shapes), and
      OUT/tokenizer/ (the directory's tokenizer.json and friends, for the `tokenizers` library).
  python -m medmoe_jax.hf export --checkpoint CKPT --out DIR
      A checkpoint of ours (a workdir, its checkpoints/ or one step) -> HF Qwen2 (dense; Llama
      when the model has no q/k/v bias) or HF Qwen2-MoE (dense layers via `mlp_only_layers`,
      `norm_topk_prob` from our config, no shared expert), loadable by `transformers` with no
      custom code.

Never unpickles: .bin/.pt/.pth/.ckpt weight files are refused; weights are read from safetensors.

Layouts (ours <- HF, per layer; our kernels are [in, out], torch Linear weights [out, in]):
  q/k/v kernel [D, H, Dh]  <- q/k/v_proj.weight [H*Dh, D]^T     bias [H, Dh] <- [H*Dh]
  o kernel [H, Dh, D]      <- o_proj.weight [D, H*Dh]^T
  gate/up kernel [D, F]    <- gate/up_proj.weight [F, D]^T       down [F, D] <- [D, F]^T
  router [D, E]            <- mlp.gate.weight [E, D]^T
  wi_gate/wi_up [E, D, F]  <- mlp.experts.{e}.gate/up_proj.weight [F, D]^T
  wo [E, F, D]             <- mlp.experts.{e}.down_proj.weight [D, F]^T
  embedding [V, D] = embed_tokens.weight; lm_head kernel [D, V] <- lm_head.weight^T (if untied)
RoPE needs no permutation: both sides rotate the two halves of each head (HF `rotate_half`).

Routing: our MoE at inference is plain top-k over softmax(router logits) with optional
renormalisation, which is what Qwen2-MoE's router computes (softmax in float32, top-k, divide
by the sum when `norm_topk_prob`). Language forcing (hybrid-k) is training-only, so an exported
model needs no language tag. Not exportable: hard language routing (needs the tag at inference)
and MoE-CT's appended blocks (no Qwen2-MoE equivalent). HF never drops tokens; our `capacity`
backend drops tokens over `capacity_factor_eval`, so compare with enough capacity or `dense`.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

import numpy as np

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SUPPORTED = ("qwen2", "llama", "qwen2_moe")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


class HFError(ValueError):
  """The HF directory or the model cannot be converted; the message says why and what to do."""


def _refuse_pickle(path: str) -> None:
  raise HFError(f"refusing to load {path}: .bin/.pt/.pth/.ckpt weights are Python pickles, and "
                "unpickling can run arbitrary code. Convert them to safetensors first, in an "
                "environment you trust (e.g. load with transformers and save_pretrained(..., "
                "safe_serialization=True)), then import the safetensors directory")


# --- Reading an HF directory ------------------------------------------------------------------

class SafetensorsReader:
  """Lazy tensor access over model.safetensors, a sharded index, or every *.safetensors file."""

  def __init__(self, hf_dir: str):
    from safetensors import safe_open

    if not os.path.isdir(hf_dir):
      if hf_dir.endswith(PICKLE_SUFFIXES):
        _refuse_pickle(hf_dir)
      raise HFError(f"--hf_dir {hf_dir}: not a directory (expected config.json + *.safetensors)")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(hf_dir, "*.safetensors")))
      weight_map = None
    if not files:
      pickles = [p for p in os.listdir(hf_dir) if p.endswith(PICKLE_SUFFIXES)]
      if pickles:
        _refuse_pickle(os.path.join(hf_dir, pickles[0]))
      raise HFError(f"{hf_dir}: no *.safetensors weights found")
    self._handles = {}
    self._where = {}
    for name in files:
      path = os.path.join(hf_dir, name)
      if not os.path.isfile(path):
        raise HFError(f"{index}: lists {name}, which is missing from {hf_dir}")
      h = safe_open(path, framework="numpy")
      self._handles[name] = h
      for key in h.keys():
        self._where[key] = name
    if weight_map is not None:
      missing = [k for k in weight_map if k not in self._where]
      if missing:
        raise HFError(f"{index}: tensor {missing[0]} is not in {weight_map[missing[0]]}")

  def keys(self):
    return self._where.keys()

  def __contains__(self, key):
    return key in self._where

  def get(self, key: str) -> np.ndarray:
    if key not in self._where:
      raise HFError(f"tensor {key} is missing from the safetensors files")
    return self._handles[self._where[key]].get_tensor(key)


def read_hf_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise HFError(f"{hf_dir}: no config.json (a Hugging Face model directory has one)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _rope_theta(hf: dict) -> float:
  rp = hf.get("rope_parameters") or {}
  rs = hf.get("rope_scaling") or {}
  for name, d in (("rope_parameters", rp), ("rope_scaling", rs)):
    kind = d.get("rope_type", d.get("type", "default")) if d else "default"
    if kind not in ("default", None):
      raise HFError(f"config.json: {name}.rope_type={kind!r}; medmoe_jax implements plain RoPE "
                    "(rope_type 'default') only, so this model cannot be imported exactly")
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    raise HFError("config.json: partial_rotary_factor != 1 is not supported (full RoPE only)")
  return float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))


def moe_layers_of(hf: dict) -> list[int]:
  """Qwen2-MoE's rule for which layers are sparse (modeling_qwen2_moe.Qwen2MoeDecoderLayer)."""
  only = set(hf.get("mlp_only_layers") or [])
  step = int(hf.get("decoder_sparse_step", 1))
  n = int(hf["num_hidden_layers"])
  return [i for i in range(n)
          if i not in only and int(hf.get("num_experts", 0)) > 0 and (i + 1) % step == 0]


def _layers_string(layers: list[int], n: int) -> str:
  if not layers:
    return "none"
  if layers == list(range(n)):
    return "all"
  if layers == list(range(n - len(layers), n)):
    return f"last:{len(layers)}"
  return ",".join(str(i) for i in layers)


def model_overrides(hf: dict) -> dict:
  """HF config.json -> {"model": {...}, "moe": {...}} for our config; refuses what we cannot run."""
  mt = hf.get("model_type")
  if mt not in SUPPORTED:
    raise HFError(f"config.json: model_type {mt!r} is not supported; import one of "
                  f"{', '.join(SUPPORTED)}")
  if hf.get("hidden_act", "silu") != "silu":
    raise HFError(f"config.json: hidden_act={hf['hidden_act']!r}; our FFN is SwiGLU (silu)")
  if hf.get("use_sliding_window", False):
    raise HFError("config.json: use_sliding_window=true; medmoe_jax attends over the whole "
                  "packed segment (no sliding window)")
  if mt == "llama":
    if hf.get("attention_bias", False):
      raise HFError("config.json: attention_bias=true also adds an o_proj bias, which our "
                    "attention does not have")
    if hf.get("mlp_bias", False):
      raise HFError("config.json: mlp_bias=true; our SwiGLU FFN has no biases")
    qkv_bias = False
  elif mt == "qwen2_moe":
    qkv_bias = bool(hf.get("qkv_bias", True))
  else:
    qkv_bias = True
  d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  model = dict(
      vocab_size=int(hf["vocab_size"]), d_model=d, num_layers=int(hf["num_hidden_layers"]),
      num_heads=h, num_kv_heads=int(hf.get("num_key_value_heads") or h),
      head_dim=int(hf.get("head_dim") or d // h), d_ff=int(hf["intermediate_size"]),
      qkv_bias=qkv_bias, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      rope_theta=_rope_theta(hf), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      init_std=float(hf.get("initializer_range", 0.02)))
  moe = dict(layers="none", language_routing="none")
  if mt == "qwen2_moe":
    if int(hf.get("shared_expert_intermediate_size", 0) or 0) > 0:
      raise HFError("config.json: this Qwen2-MoE has a shared expert "
                    f"(shared_expert_intermediate_size={hf['shared_expert_intermediate_size']}); "
                    "medmoe_jax models have none")
    layers = moe_layers_of(hf)
    moe.update(layers=_layers_string(layers, model["num_layers"]),
               num_experts=int(hf["num_experts"]), top_k=int(hf["num_experts_per_tok"]),
               d_ff=int(hf["moe_intermediate_size"]),
               norm_topk=bool(hf.get("norm_topk_prob", False)))
  return {"model": model, "moe": moe}


# --- Tensor layouts -------------------------------------------------------------------------

def _block_from_hf(get, i: int, kind: str, spec) -> dict:
  """HF layer i -> our block dict (numpy, float32 or the stored dtype)."""
  p = f"model.layers.{i}."
  d, h, kv, dh = spec.d_model, spec.num_heads, spec.num_kv_heads, spec.head_dim
  attn = {}
  for name, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
    w = get(p + f"self_attn.{name}.weight")                       # [heads*dh, D]
    attn[name] = {"kernel": w.T.reshape(d, heads, dh)}
    if spec.qkv_bias:
      attn[name]["bias"] = get(p + f"self_attn.{name}.bias").reshape(heads, dh)
  attn["o_proj"] = {"kernel": get(p + "self_attn.o_proj.weight").T.reshape(h, dh, d)}
  block = {"input_norm": {"scale": get(p + "input_layernorm.weight")},
           "post_attn_norm": {"scale": get(p + "post_attention_layernorm.weight")},
           "attn": attn}
  if kind == "dense":
    block["ffn"] = {n: {"kernel": get(p + f"mlp.{n}.weight").T}
                    for n in ("gate_proj", "up_proj", "down_proj")}
  else:
    e = spec.moe.num_experts
    if (p + "mlp.experts.gate_up_proj") in get.keys():  # transformers>=5 fused in-memory layout
      gu = get(p + "mlp.experts.gate_up_proj")                  # [E, 2F, D]
      f = gu.shape[1] // 2
      wi_gate, wi_up = np.swapaxes(gu[:, :f], 1, 2), np.swapaxes(gu[:, f:], 1, 2)
      wo = np.swapaxes(get(p + "mlp.experts.down_proj"), 1, 2)  # [E, D, F] -> [E, F, D]
    else:                                                        # per-expert checkpoint layout
      wi_gate = np.stack([get(p + f"mlp.experts.{j}.gate_proj.weight").T for j in range(e)])
      wi_up = np.stack([get(p + f"mlp.experts.{j}.up_proj.weight").T for j in range(e)])
      wo = np.stack([get(p + f"mlp.experts.{j}.down_proj.weight").T for j in range(e)])
    block["ffn"] = {"router": get(p + "mlp.gate.weight").T, "wi_gate": wi_gate,
                    "wi_up": wi_up, "wo": wo}
  return block


class _Getter:
  """Reads a tensor and casts it at once, so a bf16 checkpoint is never held twice in float32."""

  def __init__(self, reader: SafetensorsReader, dtype):
    self.reader, self.dtype = reader, dtype

  def __call__(self, key):
    return self.reader.get(key).astype(self.dtype, copy=False)

  def keys(self):
    return self.reader.keys()


def hf_to_params(reader: SafetensorsReader, spec, dtype=np.float32) -> dict:
  """Our pure param tree (numpy, `dtype`) from HF tensors, stacked per segment."""
  get = _Getter(reader, dtype)
  params = {"embed": {"embedding": get("model.embed_tokens.weight")},
            "final_norm": {"scale": get("model.norm.weight")}, "segments": {}}
  if not spec.tie_embeddings:
    params["lm_head"] = {"kernel": get("lm_head.weight").T}
  i = 0
  for s, (kind, count) in enumerate(spec.segments):
    if kind not in ("dense", "moe"):
      raise HFError(f"segment kind {kind!r} has no Hugging Face equivalent")
    blocks = [_block_from_hf(get, j, kind, spec) for j in range(i, i + count)]
    params["segments"][s] = {"blocks": _stack(blocks)}
    i += count
  return _cast(params, dtype)


def _stack(blocks: list[dict]) -> dict:
  if isinstance(blocks[0], dict):
    return {k: _stack([b[k] for b in blocks]) for k in blocks[0]}
  return np.stack(blocks)


def _cast(tree, dtype):
  if isinstance(tree, dict):
    return {k: _cast(v, dtype) for k, v in tree.items()}
  return np.ascontiguousarray(np.asarray(tree).astype(dtype, copy=False))


def params_to_hf(params: dict, spec):
  """Yields (HF tensor name, numpy array [out, in] layout) for our pure param tree."""
  d, h, kv, dh = spec.d_model, spec.num_heads, spec.num_kv_heads, spec.head_dim
  a = lambda x: np.asarray(x)
  yield "model.embed_tokens.weight", a(params["embed"]["embedding"])
  i = 0
  for s, (kind, count) in enumerate(spec.segments):
    if kind not in ("dense", "moe"):
      raise HFError("MoE-CT's appended blocks and fusion gate have no Hugging Face (Qwen2-MoE) "
                    "equivalent; this model cannot be exported")
    blocks = params["segments"][s]["blocks"]
    for j in range(count):
      blk = lambda *path: a(_get_path(blocks, path)[j])
      p = f"model.layers.{i + j}."
      yield p + "input_layernorm.weight", blk("input_norm", "scale")
      yield p + "post_attention_layernorm.weight", blk("post_attn_norm", "scale")
      for name, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
        yield p + f"self_attn.{name}.weight", blk("attn", name, "kernel").reshape(d, heads * dh).T
        if spec.qkv_bias:
          yield p + f"self_attn.{name}.bias", blk("attn", name, "bias").reshape(heads * dh)
      yield p + "self_attn.o_proj.weight", blk("attn", "o_proj", "kernel").reshape(h * dh, d).T
      if kind == "dense":
        for name in ("gate_proj", "up_proj", "down_proj"):
          yield p + f"mlp.{name}.weight", blk("ffn", name, "kernel").T
      else:
        yield p + "mlp.gate.weight", blk("ffn", "router").T
        wi_gate, wi_up, wo = blk("ffn", "wi_gate"), blk("ffn", "wi_up"), blk("ffn", "wo")
        for e in range(wi_gate.shape[0]):
          yield p + f"mlp.experts.{e}.gate_proj.weight", wi_gate[e].T
          yield p + f"mlp.experts.{e}.up_proj.weight", wi_up[e].T
          yield p + f"mlp.experts.{e}.down_proj.weight", wo[e].T
        # Qwen2-MoE always builds a shared expert; width 0 makes it (and its gate) contribute 0.
        yield p + "mlp.shared_expert.gate_proj.weight", np.zeros((0, d), wi_gate.dtype)
        yield p + "mlp.shared_expert.up_proj.weight", np.zeros((0, d), wi_gate.dtype)
        yield p + "mlp.shared_expert.down_proj.weight", np.zeros((d, 0), wi_gate.dtype)
        yield p + "mlp.shared_expert_gate.weight", np.zeros((1, d), wi_gate.dtype)
    i += count
  yield "model.norm.weight", a(params["final_norm"]["scale"])
  if not spec.tie_embeddings:
    yield "lm_head.weight", a(params["lm_head"]["kernel"]).T


def _get_path(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def hf_config(spec, *, dtype: str, lb_loss_weight: float = 0.0, max_positions: int = 32768) -> dict:
  """config.json for transformers: Qwen2 / Llama (dense) or Qwen2-MoE."""
  moe_layers = list(spec.moe_layer_indices)
  cfg = {
      "vocab_size": spec.vocab_size, "hidden_size": spec.d_model,
      "intermediate_size": spec.d_ff, "num_hidden_layers": spec.num_layers,
      "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
      "hidden_act": "silu", "max_position_embeddings": max_positions,
      "initializer_range": spec.init_std, "rms_norm_eps": spec.norm_eps,
      "rope_theta": spec.rope_theta, "tie_word_embeddings": spec.tie_embeddings,
      "use_cache": True, "attention_dropout": 0.0, "torch_dtype": dtype,
  }
  if spec.head_dim != spec.d_model // spec.num_heads:
    cfg["head_dim"] = spec.head_dim
  if moe_layers:
    cfg.update({
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
        "num_experts": spec.moe.num_experts, "num_experts_per_tok": spec.moe.top_k,
        "moe_intermediate_size": spec.moe.d_ff, "shared_expert_intermediate_size": 0,
        "norm_topk_prob": spec.moe.norm_topk, "decoder_sparse_step": 1,
        "mlp_only_layers": [i for i in range(spec.num_layers) if i not in moe_layers],
        "output_router_logits": False, "router_aux_loss_coef": float(lb_loss_weight),
        "qkv_bias": spec.qkv_bias, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": spec.num_layers,
    })
  elif spec.qkv_bias:
    cfg.update({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "use_sliding_window": False, "sliding_window": None,
                "max_window_layers": spec.num_layers})
  else:
    cfg.update({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "attention_bias": False, "mlp_bias": False, "head_dim": spec.head_dim})
  return cfg


def check_exportable(spec) -> None:
  if spec.moe_layer_indices and spec.moe.shared_d_ff:
    raise HFError("this model has a shared expert (moe.shared_expert_d_ff="
                  f"{spec.moe.shared_d_ff}); its export is not implemented yet")
  if any(kind == "appended" for kind, _ in spec.segments):
    raise HFError("MoE-CT's appended blocks and fusion gate have no Hugging Face (Qwen2-MoE) "
                  "equivalent; this model cannot be exported")
  if spec.moe_layer_indices and spec.moe.language_routing == "hard":
    raise HFError("this model routes by language at inference (moe.language_routing='hard'); "
                  "Qwen2-MoE routes by its router alone, so the export would compute another "
                  "function. Export hybrid-k or plain-routed models")


def write_safetensors(tensors, out_dir: str, max_shard_bytes: int) -> list[str]:
  """Writes (name, array) pairs into model.safetensors, or shards + index past max_shard_bytes."""
  from safetensors.numpy import save_file

  shards, current, size, total = [], {}, 0, 0
  for name, arr in tensors:
    arr = np.ascontiguousarray(arr)
    if current and size + arr.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = arr
    size += arr.nbytes
    total += arr.nbytes
  shards.append(current)
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
  weight_map = {}
  for name, shard in zip(names, shards):
    save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in shard})
  if len(shards) > 1:
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return names


# --- Commands --------------------------------------------------------------------------------

def _check_out(out: str) -> None:
  if os.path.exists(out) and os.listdir(out):
    raise HFError(f"--out {out} exists and is not empty; choose a new directory")


def _copy_tokenizer(src_dir: str, dst_dir: str) -> str | None:
  """Copies tokenizer files; returns the tokenizer.json path (validated with `tokenizers`).
  config.data.tokenizer names the directory, so its tokenizer_config.json (special tokens) is
  read along with tokenizer.json."""
  found = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(src_dir, f))]
  if not found:
    return None
  os.makedirs(dst_dir, exist_ok=True)
  for f in found:
    shutil.copyfile(os.path.join(src_dir, f), os.path.join(dst_dir, f))
  path = os.path.join(dst_dir, "tokenizer.json")
  if not os.path.isfile(path):
    return None
  from tokenizers import Tokenizer
  Tokenizer.from_file(path)  # fails loudly on a broken file, before anyone trains with it
  return path


def import_hf(hf_dir: str, out: str, *, param_dtype: str = "float32", name: str | None = None):
  """Converts an HF directory; returns the written config (ConfigDict)."""
  import jax.numpy as jnp

  from medmoe_jax import config as cfg_lib
  from medmoe_jax import upcycle
  from medmoe_jax.checkpoint import Checkpointer
  from medmoe_jax.training.step import TrainState

  if hf_dir.endswith(PICKLE_SUFFIXES):
    _refuse_pickle(hf_dir)
  hf = read_hf_config(hf_dir)
  reader = SafetensorsReader(hf_dir)
  over = model_overrides(hf)
  _check_out(out)
  out = os.path.abspath(out)
  c = cfg_lib.base_config()
  c.name = name or f"imported_{hf['model_type']}"
  c.size = "imported"
  c.model.update(over["model"])
  c.model.param_dtype = param_dtype
  c.moe.update(over["moe"])
  if c.moe.d_ff == c.model.d_ff:
    c.moe.d_ff = 0
  tok = _copy_tokenizer(hf_dir, os.path.join(out, "tokenizer"))
  c.data.tokenizer = os.path.dirname(tok) if tok else ""
  # Training this config continues from the imported weights (as they are, fresh optimizer).
  c.upcycle.method = "none"
  c.upcycle["from"] = out
  cfg_lib.validate(c)
  spec = cfg_lib.model_spec(c)
  params = hf_to_params(reader, spec, dtype=np.dtype(jnp.dtype(param_dtype)))
  want = {k: v.shape for k, v in upcycle._flat(upcycle.abstract_params(spec)).items()}
  have = {k: v.shape for k, v in upcycle._flat(params).items()}
  if want != have:
    bad = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
    raise HFError(f"{hf_dir}: tensor layout does not match config.json at {bad[0]}")
  if tok:
    from tokenizers import Tokenizer
    n = Tokenizer.from_file(tok).get_vocab_size(with_added_tokens=True)
    if n > spec.vocab_size:
      raise HFError(f"{tok}: {n} tokens but the model has only vocab_size={spec.vocab_size}")
  os.makedirs(out, exist_ok=True)
  ck = Checkpointer(os.path.join(out, "checkpoints"), async_save=False)
  ck.save(0, TrainState(np.zeros((), np.int32), params, {}), {"imported_from": os.path.abspath(hf_dir)})
  ck.close()
  text = cfg_lib.to_json(c)
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.join(out, "config.py"), "w", encoding="utf-8") as f:
    f.write(_CONFIG_PY.format(src=os.path.abspath(hf_dir), out=out, json=text))
  return c


_CONFIG_PY = '''"""Generated by `python -m medmoe_jax.hf import` from {src}.

The imported model's shapes; training this config continues from its weights (dense):
  python -m medmoe_jax.train --config={out}/config.py
Upcycle it with a method config whose model shapes match (Qwen2 sizes: :0.5b, :1.5b, :7b), e.g.
  python -m medmoe_jax.train --config=configs/post_moe.py:0.5b --config.upcycle.from={out}
"""
import json

from medmoe_jax.config import from_json_dict

CONFIG_JSON = r"""{json}"""


def get_config(arg=None):
  del arg
  return from_json_dict(json.loads(CONFIG_JSON))
'''


def load_checkpoint(checkpoint: str):
  """(config, spec, numpy params, step) of a checkpoint of ours with a config.json beside it."""
  from medmoe_jax import config as cfg_lib
  from medmoe_jax import upcycle

  step_dir, _ = upcycle.find_step_dir(checkpoint)
  cj = upcycle.find_config_json(str(step_dir))
  if cj is None:
    raise HFError(f"{checkpoint}: no config.json in the run directory (a training workdir and an "
                  "import directory have one); cannot tell the model's shapes")
  c = cfg_lib.from_json_dict(json.loads(cj.read_text()))
  spec = cfg_lib.model_spec(c)
  params, step = upcycle.load_params(str(step_dir), upcycle.abstract_params(spec))
  return c, spec, params, step


def export_hf(checkpoint: str, out: str, *, dtype: str | None = None,
              max_shard_gb: float = 5.0) -> list[str]:
  """Writes an HF model directory; returns the safetensors file names."""
  import ml_dtypes  # noqa: F401  (bfloat16 numpy dtype)

  c, spec, params, step = load_checkpoint(checkpoint)
  check_exportable(spec)
  _check_out(out)
  os.makedirs(out, exist_ok=True)
  dtype = dtype or spec.param_dtype
  np_dtype = np.dtype(dtype)
  tensors = ((k, v.astype(np_dtype)) for k, v in params_to_hf(params, spec))
  names = write_safetensors(tensors, out, int(max_shard_gb * 2**30))
  cfg = hf_config(spec, dtype=dtype, lb_loss_weight=float(c.moe.lb_loss_weight),
                  max_positions=max(32768, int(c.data.seq_len)))
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
  tok = str(c.data.tokenizer)
  tok_dir = tok if os.path.isdir(tok) else os.path.dirname(tok)
  if tok and os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
    _copy_tokenizer(tok_dir, out)
  else:
    print(f"note: tokenizer {tok!r} is not a Hugging Face tokenizer; none written to {out}",
          flush=True)
  return names


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m medmoe_jax.hf", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  imp = sub.add_parser("import", help="HF directory (safetensors) -> our checkpoint + config")
  imp.add_argument("--hf_dir", required=True)
  imp.add_argument("--out", required=True)
  imp.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"))
  imp.add_argument("--name", default=None)
  exp = sub.add_parser("export", help="our checkpoint -> HF Qwen2 / Qwen2-MoE directory")
  exp.add_argument("--checkpoint", required=True)
  exp.add_argument("--out", required=True)
  exp.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
  exp.add_argument("--max_shard_gb", type=float, default=5.0)
  args = parser.parse_args(argv)
  try:
    if args.cmd == "import":
      c = import_hf(args.hf_dir, args.out, param_dtype=args.param_dtype, name=args.name)
      print(f"imported {args.hf_dir} -> {args.out} ({c.model.num_layers} layers, d_model "
            f"{c.model.d_model}, moe.layers={c.moe.layers}); config: {args.out}/config.py")
    else:
      names = export_hf(args.checkpoint, args.out, dtype=args.dtype, max_shard_gb=args.max_shard_gb)
      print(f"exported {args.checkpoint} -> {args.out} ({len(names)} safetensors file(s))")
  except (HFError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
