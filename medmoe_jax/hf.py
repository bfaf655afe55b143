"""Hugging Face interop: `python -m medmoe_jax.hf import|export`.

  python -m medmoe_jax.hf import --hf_dir DIR --out OUT
      A local HF model directory (config.json + *.safetensors, sharded index supported; Qwen2 /
      Qwen2.5, Qwen3, Llama (3.x RoPE scaling included), Qwen2-MoE with its shared expert,
      Qwen3-MoE) -> OUT/checkpoints/0 (an Orbax checkpoint of our model, params only),
      OUT/config.json + OUT/config.py (a config with its shapes), and OUT/tokenizer/ (the
      directory's tokenizer.json and friends, for the `tokenizers` library). Tensors stream
      from disk one at a time into the target layout and dtype (`hf_to_params`).
  python -m medmoe_jax.hf export --checkpoint CKPT --out DIR
      A checkpoint of ours (a workdir, its checkpoints/ or one step) -> the HF architecture of
      its base (`hf_architecture`): dense as Qwen3 / Qwen2 / Llama, MoE as Qwen3-MoE or
      Qwen2-MoE (dense layers via `mlp_only_layers`, `norm_topk_prob` from our config, a shared
      expert as Qwen2-MoE's), loadable by `transformers` with no custom code.

Never unpickles: .bin/.pt/.pth/.ckpt weight files are refused; weights are read from safetensors.

Layouts (ours <- HF, per layer; our kernels are [in, out], torch Linear weights [out, in]):
  q/k/v kernel [D, H, Dh]  <- q/k/v_proj.weight [H*Dh, D]^T     bias [H, Dh] <- [H*Dh]
  q/k_norm scale [Dh]      <- self_attn.q/k_norm.weight (Qwen3)
  o kernel [H, Dh, D]      <- o_proj.weight [D, H*Dh]^T
  gate/up kernel [D, F]    <- gate/up_proj.weight [F, D]^T       down [F, D] <- [D, F]^T
  router [D, E]            <- mlp.gate.weight [E, D]^T
  wi_gate/wi_up [E, D, F]  <- mlp.experts.{e}.gate/up_proj.weight [F, D]^T
  wo [E, F, D]             <- mlp.experts.{e}.down_proj.weight [D, F]^T
                              (or the fused mlp.experts.gate_up_proj [E, 2F, D] / down_proj)
  shared_expert.*, shared_expert_gate kernel [D, 1] <- mlp.shared_expert.*, shared_expert_gate
  embedding [V, D] = embed_tokens.weight; lm_head kernel [D, V] <- lm_head.weight^T (if untied)
RoPE needs no permutation: both sides rotate the two halves of each head (HF `rotate_half`).

Routing: our MoE at inference is plain top-k over softmax(router logits) with optional
renormalisation, which is what Qwen2-MoE's and Qwen3-MoE's routers compute (softmax in float32, top-k, divide
by the sum when `norm_topk_prob`). Language forcing (hybrid-k) is training-only, so an exported
model needs no language tag. Not exportable: hard language routing (needs the tag at inference)
MoE-CT's appended blocks (no HF equivalent), a shared expert on a Qwen3 base (Qwen3-MoE has
none) or without a gate (Qwen2-MoE always gates it). HF never drops tokens; our `capacity`
backend drops tokens over `capacity_factor_eval`, so compare with enough capacity or `dense`.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys

import numpy as np

from medmoe_jax import log
from medmoe_jax.errors import InputError  # a ValueError the CLIs report in one line
from medmoe_jax.training import faults

_log = log.get(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SUPPORTED = ("qwen2", "qwen3", "llama", "qwen2_moe", "qwen3_moe")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


class HFError(InputError):
  """The HF directory or the model cannot be converted; the message says why and what to do."""


def _refuse_pickle(path: str) -> None:
  raise HFError(f"refusing to load {path}: .bin/.pt/.pth/.ckpt weights are Python pickles, and "
                "unpickling can run arbitrary code. Convert them to safetensors first, in an "
                "environment you trust (e.g. load with transformers and save_pretrained(..., "
                "safe_serialization=True)), then import the safetensors directory")


# --- Reading an HF directory ------------------------------------------------------------------

# safetensors dtype names -> numpy (bfloat16 through ml_dtypes: numpy has none of its own).
def _st_dtype(name: str, where: str):
  import ml_dtypes
  table = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
  if name not in table:
    raise HFError(f"{where}: dtype {name} is not supported")
  return np.dtype(table[name])


class SafetensorsReader:
  """Tensor access over model.safetensors, a sharded index, or every *.safetensors file. Reads
  each file's header only; `get` reads one tensor's bytes from disk (no whole-file load, no
  torch), so an import holds one source tensor at a time."""

  def __init__(self, hf_dir: str):
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
    self.files = []
    self._where = {}  # key -> (path, dtype, shape, byte offset)
    for name in files:
      path = os.path.join(hf_dir, name)
      if not os.path.isfile(path):
        key = next(k for k, v in weight_map.items() if v == name)
        raise HFError(f"{index}: {key} is in {name}, which is missing from {hf_dir}")
      self.files.append(path)
      for key, (dtype, shape, offset) in _read_header(path).items():
        self._where[key] = (path, dtype, shape, offset)
    if weight_map is not None:
      missing = [k for k in weight_map if k not in self._where]
      if missing:
        raise HFError(f"{index}: tensor {missing[0]} is not in {weight_map[missing[0]]}")

  def keys(self):
    return self._where.keys()

  def keys_of(self, path: str) -> list[str]:
    """The tensors stored in file `path`, in file order."""
    return sorted((k for k, w in self._where.items() if w[0] == path),
                  key=lambda k: self._where[k][3])

  def file_of(self, key: str) -> str:
    return self._where[key][0]

  def __contains__(self, key):
    return key in self._where

  def get(self, key: str) -> np.ndarray:
    if key not in self._where:
      raise HFError(f"tensor {key} is missing from the safetensors files")
    path, dtype, shape, offset = self._where[key]
    count = int(np.prod(shape, dtype=np.int64))
    with open(path, "rb") as f:
      f.seek(offset)
      data = np.fromfile(f, dtype=dtype, count=count)
    if data.size != count:
      raise HFError(f"{path}: tensor {key} is truncated")
    return data.reshape(shape)


def _read_header(path: str) -> dict:
  """safetensors layout: u64 little-endian header length, a JSON header, then the data."""
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise HFError(f"{path}: not a safetensors file (too short)")
    n = int.from_bytes(head, "little")
    try:
      header = json.loads(f.read(n))
    except ValueError:
      raise HFError(f"{path}: not a safetensors file (unreadable header)") from None
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    out[key] = (_st_dtype(info["dtype"], f"{path}: {key}"), tuple(info["shape"]),
                8 + n + int(info["data_offsets"][0]))
  return out


def read_hf_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise HFError(f"{hf_dir}: no config.json (a Hugging Face model directory has one)")
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise HFError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


# RoPE types we compute exactly as transformers does (model/layers.rope_inv_freq).
ROPE_TYPES = ("default", "linear", "llama3")


def _rope(hf: dict, where: str = "config.json") -> tuple[float, dict]:
  """(rope_theta, our model.rope_scaling) from `rope_parameters` (transformers 5) or
  `rope_scaling` + `rope_theta` (earlier files); refuses a RoPE type we do not compute."""
  rp = hf.get("rope_parameters") or {}
  rs = hf.get("rope_scaling") or {}
  scaling = {"rope_type": "default"}
  for name, d in (("rope_parameters", rp), ("rope_scaling", rs)):
    kind = d.get("rope_type", d.get("type", "default")) if d else "default"
    if kind in (None, "default"):
      continue
    if kind not in ROPE_TYPES:
      raise HFError(f"{where}: {name}.rope_type={kind!r} is not implemented (medmoe_jax computes "
                    f"{', '.join(ROPE_TYPES)} exactly); this model cannot be imported exactly")
    keys = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings")}[kind]
    missing = [k for k in keys if k not in d]
    if missing:
      raise HFError(f"{where}: {name}.{missing[0]} is missing (rope_type {kind!r} needs it)")
    scaling = {"rope_type": kind, **{k: (int(d[k]) if k.startswith("original") else float(d[k]))
                                     for k in keys}}
  if float(rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
    raise HFError(f"{where}: partial_rotary_factor != 1 is not supported (full RoPE only)")
  return float(rp.get("rope_theta", hf.get("rope_theta", 10000.0))), scaling


def _num_experts(hf: dict) -> int:
  """Hub files write num_experts; transformers 5 saves Qwen3-MoE's as num_local_experts."""
  return int(hf.get("num_experts", hf.get("num_local_experts", 0)) or 0)


def moe_layers_of(hf: dict) -> list[int]:
  """Qwen2-MoE's rule for which layers are sparse (modeling_qwen2_moe.Qwen2MoeDecoderLayer)."""
  only = set(hf.get("mlp_only_layers") or [])
  step = int(hf.get("decoder_sparse_step", 1))
  n = int(hf["num_hidden_layers"])
  return [i for i in range(n)
          if i not in only and _num_experts(hf) > 0 and (i + 1) % step == 0]


def _layers_string(layers: list[int], n: int) -> str:
  if not layers:
    return "none"
  if layers == list(range(n)):
    return "all"
  if layers == list(range(n - len(layers), n)):
    return f"last:{len(layers)}"
  return ",".join(str(i) for i in layers)


def model_overrides(hf: dict, where: str = "config.json") -> dict:
  """HF config.json -> {"model": {...}, "moe": {...}} for our config; refuses what we cannot run
  exactly, naming the file and key."""
  mt = hf.get("model_type")
  if mt not in SUPPORTED:
    raise HFError(f"{where}: model_type={mt!r} is not supported; import one of "
                  f"{', '.join(SUPPORTED)}")
  if hf.get("hidden_act", "silu") != "silu":
    raise HFError(f"{where}: hidden_act={hf['hidden_act']!r}; our FFN is SwiGLU (silu)")
  if hf.get("use_sliding_window", False):
    raise HFError(f"{where}: use_sliding_window=true; medmoe_jax attends over the whole "
                  "packed segment (no sliding window)")
  if mt in ("llama", "qwen3", "qwen3_moe"):
    if hf.get("attention_bias", False):
      raise HFError(f"{where}: attention_bias=true also adds an o_proj bias, which our "
                    "attention does not have")
    if hf.get("mlp_bias", False):
      raise HFError(f"{where}: mlp_bias=true; our SwiGLU FFN has no biases")
    qkv_bias = False
  elif mt == "qwen2_moe":
    qkv_bias = bool(hf.get("qkv_bias", True))
  else:
    qkv_bias = True
  d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  theta, scaling = _rope(hf, where)
  model = dict(
      vocab_size=int(hf["vocab_size"]), d_model=d, num_layers=int(hf["num_hidden_layers"]),
      num_heads=h, num_kv_heads=int(hf.get("num_key_value_heads") or h),
      head_dim=int(hf.get("head_dim") or d // h), d_ff=int(hf["intermediate_size"]),
      qkv_bias=qkv_bias, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      rope_theta=theta, rope_scaling=scaling, qk_norm=mt in ("qwen3", "qwen3_moe"),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      init_std=float(hf.get("initializer_range", 0.02)),
      max_position_embeddings=int(hf.get("max_position_embeddings", 32768)))
  moe = dict(layers="none", language_routing="none")
  if mt in ("qwen2_moe", "qwen3_moe"):
    layers = moe_layers_of(hf)
    moe.update(layers=_layers_string(layers, model["num_layers"]),
               num_experts=_num_experts(hf), top_k=int(hf["num_experts_per_tok"]),
               d_ff=int(hf["moe_intermediate_size"]),
               norm_topk=bool(hf.get("norm_topk_prob", False)))
    shared = int(hf.get("shared_expert_intermediate_size", 0) or 0) if mt == "qwen2_moe" else 0
    if shared:  # Qwen2-MoE always gates its shared expert (sigmoid(shared_expert_gate(x)))
      moe.update(shared_expert_d_ff=shared, shared_expert_gate=True)
  return {"model": model, "moe": moe}


# --- Tensor layouts -------------------------------------------------------------------------

def _import_plan(spec, keys) -> dict:
  """HF tensor name -> [(our param path, index into it, transform)]: where each source tensor
  goes in our param tree (segments stacked on a leading layer axis, experts on the next)."""
  d, h, kv, dh = spec.d_model, spec.num_heads, spec.num_kv_heads, spec.head_dim
  plan: dict[str, list] = {}
  t = lambda w: w.T

  def add(key, path, index=(), fn=lambda w: w):
    plan.setdefault(key, []).append((path, index, fn))

  add("model.embed_tokens.weight", ("embed", "embedding"))
  add("model.norm.weight", ("final_norm", "scale"))
  if not spec.tie_embeddings:
    add("lm_head.weight", ("lm_head", "kernel"), (), t)
  layer = 0
  for s, (kind, count) in enumerate(spec.segments):
    if kind not in ("dense", "moe"):
      raise HFError(f"segment kind {kind!r} has no Hugging Face equivalent")
    for j in range(count):
      p, b = f"model.layers.{layer}.", ("segments", s, "blocks")
      add(p + "input_layernorm.weight", b + ("input_norm", "scale"), (j,))
      add(p + "post_attention_layernorm.weight", b + ("post_attn_norm", "scale"), (j,))
      for name, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
        add(p + f"self_attn.{name}.weight", b + ("attn", name, "kernel"), (j,),
            lambda w, n=heads: w.T.reshape(d, n, dh))                   # [n*dh, D] -> [D, n, dh]
        if spec.qkv_bias:
          add(p + f"self_attn.{name}.bias", b + ("attn", name, "bias"), (j,),
              lambda w, n=heads: w.reshape(n, dh))
      add(p + "self_attn.o_proj.weight", b + ("attn", "o_proj", "kernel"), (j,),
          lambda w: w.T.reshape(h, dh, d))
      if spec.qk_norm:
        for name in ("q_norm", "k_norm"):
          add(p + f"self_attn.{name}.weight", b + ("attn", name, "scale"), (j,))
      if kind == "dense":
        for name in ("gate_proj", "up_proj", "down_proj"):
          add(p + f"mlp.{name}.weight", b + ("ffn", name, "kernel"), (j,), t)
      else:
        f = b + ("ffn",)
        add(p + "mlp.gate.weight", f + ("router",), (j,), t)
        if (p + "mlp.experts.gate_up_proj") in keys:  # transformers>=5 fused in-memory layout
          half = lambda w, i: np.swapaxes(w[:, i * (w.shape[1] // 2):(i + 1) * (w.shape[1] // 2)], 1, 2)
          add(p + "mlp.experts.gate_up_proj", f + ("wi_gate",), (j,), lambda w: half(w, 0))
          add(p + "mlp.experts.gate_up_proj", f + ("wi_up",), (j,), lambda w: half(w, 1))
          add(p + "mlp.experts.down_proj", f + ("wo",), (j,), lambda w: np.swapaxes(w, 1, 2))
        else:                                          # per-expert checkpoint layout
          for e in range(spec.moe.num_experts):
            for hf_name, ours in (("gate_proj", "wi_gate"), ("up_proj", "wi_up"), ("down_proj", "wo")):
              add(p + f"mlp.experts.{e}.{hf_name}.weight", f + (ours,), (j, e), t)
        if spec.moe.shared_d_ff:
          for name in ("gate_proj", "up_proj", "down_proj"):
            add(p + f"mlp.shared_expert.{name}.weight", f + ("shared_expert", name, "kernel"), (j,), t)
          add(p + "mlp.shared_expert_gate.weight", f + ("shared_expert_gate", "kernel"), (j,), t)
      layer += 1
  return plan


def hf_to_params(reader: SafetensorsReader, spec, dtype=np.float32) -> dict:
  """Our pure param tree (numpy, `dtype`) from HF tensors, streamed: the target arrays are
  allocated once, then each file is read tensor by tensor and every tensor is cast and written
  straight into its slot, so the host holds the result plus one source tensor at a time."""
  import jax

  from medmoe_jax import upcycle

  plan = _import_plan(spec, reader.keys())
  params = jax.tree.map(lambda leaf: np.empty(leaf.shape, dtype), upcycle.abstract_params(spec))
  missing = [k for k in plan if k not in reader]
  if missing:
    raise HFError(f"tensor {missing[0]} is missing from the safetensors files (config.json "
                  "says the model has it)")
  for file in reader.files:
    for key in reader.keys_of(file):
      for path, index, fn in plan.get(key, ()):
        target = _get_path(params, path)
        value = fn(reader.get(key))
        slot = target[index] if index else target
        if value.shape != slot.shape:
          raise HFError(f"{file}: tensor {key} has shape {tuple(reader.get(key).shape)}, which "
                        f"does not fit {'.'.join(map(str, path))} {tuple(slot.shape)} of the "
                        "model config.json describes")
        target[index] = value  # casts into the target dtype in place
  return params


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
      if spec.qk_norm:
        for name in ("q_norm", "k_norm"):
          yield p + f"self_attn.{name}.weight", blk("attn", name, "scale")
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
        if spec.moe.shared_d_ff:
          for name in ("gate_proj", "up_proj", "down_proj"):
            yield p + f"mlp.shared_expert.{name}.weight", blk("ffn", "shared_expert", name, "kernel").T
          yield p + "mlp.shared_expert_gate.weight", blk("ffn", "shared_expert_gate", "kernel").T
        elif not spec.qk_norm:
          # Qwen2-MoE always builds a shared expert; width 0 makes it (and its gate) add 0.
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


def _rope_parameters(spec) -> dict:
  """transformers 5's `rope_parameters` for our RoPE (rope_theta included)."""
  return {"rope_type": "default", "rope_theta": spec.rope_theta,
          **{k: (int(v) if k == "original_max_position_embeddings" else v)
             for k, v in dict(spec.rope_scaling).items()}}


def hf_architecture(spec) -> str:
  """The HF model_type an export of `spec` writes: per-head q/k norm (Qwen3 bases) -> qwen3 /
  qwen3_moe; q/k/v bias (Qwen2 bases) -> qwen2 / qwen2_moe; neither -> llama (dense) or
  qwen2_moe with qkv_bias=false (MoE: transformers has no Llama layout with dense layers)."""
  moe = bool(spec.moe_layer_indices)
  if spec.qk_norm:
    return "qwen3_moe" if moe else "qwen3"
  if moe:
    return "qwen2_moe"
  return "qwen2" if spec.qkv_bias else "llama"


ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "llama": "LlamaForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM"}


def hf_config(spec, *, dtype: str, lb_loss_weight: float = 0.0, max_positions: int = 32768) -> dict:
  """config.json for transformers (see `hf_architecture`)."""
  moe_layers = list(spec.moe_layer_indices)
  mt = hf_architecture(spec)
  rope = _rope_parameters(spec)
  cfg = {
      "architectures": [ARCHITECTURES[mt]], "model_type": mt,
      "vocab_size": spec.vocab_size, "hidden_size": spec.d_model,
      "intermediate_size": spec.d_ff, "num_hidden_layers": spec.num_layers,
      "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
      "head_dim": spec.head_dim, "hidden_act": "silu", "max_position_embeddings": max_positions,
      "initializer_range": spec.init_std, "rms_norm_eps": spec.norm_eps,
      "rope_theta": spec.rope_theta, "rope_parameters": rope,
      "tie_word_embeddings": spec.tie_embeddings,
      "use_cache": True, "attention_dropout": 0.0, "torch_dtype": dtype,
  }
  if spec.rope_scaling:  # transformers 4.x reads the scaling from here
    cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
  if mt != "llama":
    cfg.update({"use_sliding_window": False, "sliding_window": None,
                "max_window_layers": spec.num_layers})
  if mt in ("qwen3", "qwen3_moe", "llama"):
    cfg["attention_bias"] = False
  if mt == "llama":
    cfg["mlp_bias"] = False
  if moe_layers:
    cfg.update({
        "num_experts": spec.moe.num_experts, "num_experts_per_tok": spec.moe.top_k,
        "moe_intermediate_size": spec.moe.d_ff, "norm_topk_prob": spec.moe.norm_topk,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [i for i in range(spec.num_layers) if i not in moe_layers],
        "output_router_logits": False, "router_aux_loss_coef": float(lb_loss_weight),
    })
  if mt == "qwen2_moe":
    cfg.update({"shared_expert_intermediate_size": spec.moe.shared_d_ff,
                "qkv_bias": spec.qkv_bias})
  return cfg


def check_exportable(spec) -> None:
  """Refuses, in one line, a model no custom-code-free HF architecture computes exactly."""
  if any(kind == "appended" for kind, _ in spec.segments):
    raise HFError("MoE-CT's appended blocks and fusion gate have no Hugging Face equivalent "
                  "(no transformers architecture fuses a block stack back into its input); this "
                  "model cannot be exported")
  if not spec.moe_layer_indices:
    return
  if spec.moe.language_routing == "hard":
    raise HFError("this model routes by language at inference (moe.language_routing='hard'); "
                  "Qwen2-MoE / Qwen3-MoE route by their router alone, so the export would "
                  "compute another function. Export hybrid-k or plain-routed models")
  if spec.moe.shared_d_ff and spec.qk_norm:
    raise HFError(f"moe.shared_expert_d_ff={spec.moe.shared_d_ff}: Qwen3-MoE has no shared "
                  "expert, so a Qwen3-based model with one cannot be exported")
  if spec.moe.shared_d_ff and not spec.moe.shared_gate:
    raise HFError("moe.shared_expert_gate=False: Qwen2-MoE always scales its shared expert by "
                  "a sigmoid gate, so an ungated shared expert cannot be exported exactly")


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
  if hf_dir.endswith(PICKLE_SUFFIXES):
    _refuse_pickle(hf_dir)
  hf = read_hf_config(hf_dir)
  reader = SafetensorsReader(hf_dir)
  over = model_overrides(hf, os.path.join(hf_dir, "config.json"))
  _check_out(out)
  out = os.path.abspath(out)
  existed = os.path.exists(out)
  try:
    return _write_import(hf_dir, hf, reader, over, out, param_dtype, name)
  except BaseException:
    if not existed:  # a failed import leaves no half-written directory behind
      shutil.rmtree(out, ignore_errors=True)
    raise


def _write_import(hf_dir, hf, reader, over, out, param_dtype, name):
  import jax.numpy as jnp

  from medmoe_jax import config as cfg_lib
  from medmoe_jax.checkpoint import Checkpointer
  from medmoe_jax.training.step import TrainState

  c = cfg_lib.base_config()
  c.name = name or f"imported_{hf['model_type']}"
  c.size = "imported"
  c.model.update(over["model"])
  c.model.param_dtype = param_dtype
  c.moe.update(over["moe"])
  # The default training length must fit the model's context (tiny test models have short ones).
  c.data.seq_len = min(int(c.data.seq_len), int(c.model.max_position_embeddings))
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
  if tok:
    from tokenizers import Tokenizer
    n = Tokenizer.from_file(tok).get_vocab_size(with_added_tokens=True)
    if n > spec.vocab_size:
      raise HFError(f"{tok}: {n} tokens but the model has only vocab_size={spec.vocab_size}")
  os.makedirs(out, exist_ok=True)
  ck = Checkpointer(os.path.join(out, "checkpoints"), async_save=False)
  ck.save(0, TrainState(np.zeros((), np.int32), _to_device_leafwise(params), {}),
          {"imported_from": os.path.abspath(hf_dir)})
  ck.close()
  text = cfg_lib.to_json(c)
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.join(out, "config.py"), "w", encoding="utf-8") as f:
    f.write(_CONFIG_PY.format(src=os.path.abspath(hf_dir), out=out, json=text))
  return c


def _to_device_leafwise(params: dict) -> dict:
  """numpy leaves -> jax arrays one at a time, each host copy dropped as soon as it is moved:
  Orbax saves jax arrays with less host memory than numpy ones (BENCHMARKS.md, "HF import
  memory"), and the host never holds two copies of the whole model."""
  import jax
  import jax.numpy as jnp

  leaves, treedef = jax.tree.flatten(params)
  params.clear()
  for i, leaf in enumerate(leaves):
    leaves[i] = jnp.asarray(leaf)
    del leaf
  return jax.tree.unflatten(treedef, leaves)


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

  # Orbax reads absolute paths only; `--checkpoint workdir/run` is relative to the shell's cwd.
  step_dir, _ = upcycle.find_step_dir(checkpoint if "://" in checkpoint else os.path.abspath(checkpoint))
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
  from medmoe_jax import config as cfg_lib  # pylint: disable=g-import-not-at-top
  cfg = hf_config(spec, dtype=dtype, lb_loss_weight=cfg_lib.lb_weight_hf_units(c),
                  max_positions=max(int(c.model.get("max_position_embeddings", 32768)),
                                    int(c.data.seq_len)))
  cfg.update(_write_tokenizer(c, out, spec.vocab_size))
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
  return names


def _write_tokenizer(c, out: str, vocab_size: int) -> dict:
  """The run's tokenizer into the export: an HF tokenizer's files copied, a sentencepiece one
  (the sample included) converted to tokenizer.json with its special tokens and a chat template
  for config.data.chat_template. Returns the special token ids for config.json."""
  from medmoe_jax.data import tokenizer as tok_lib
  from medmoe_jax.data import tokenizer_json

  spec = str(c.data.tokenizer)
  if not spec:
    _log.info(f"note: the run has no tokenizer (config.data.tokenizer=''); none written to {out}")
    return {}
  tok = tok_lib.load_tokenizer(spec)
  if tok.vocab_size > vocab_size:  # a model this tokenizer never fed (its ids would not fit)
    _log.info(f"note: tokenizer {spec!r} has {tok.vocab_size} tokens, more than the model's "
              f"vocab_size={vocab_size}; none written to {out}")
    return {}
  if tok.kind == "sentencepiece":
    template = tokenizer_json.CHAT_TEMPLATES.get(str(c.data.get("chat_template", "apollo")))
    tokenizer_json.write_hf_tokenizer(tok, out, template)
  else:
    tok_dir = spec if os.path.isdir(spec) else os.path.dirname(spec)
    _copy_tokenizer(tok_dir, out)
  ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
  gen = os.path.join(out, "generation_config.json")
  if not os.path.isfile(gen):
    with open(gen, "w", encoding="utf-8") as f:
      json.dump({**ids, "do_sample": False}, f, indent=2)
  return ids


def main(argv=None) -> int:
  parser = faults.ArgumentParser(prog="python -m medmoe_jax.hf", description=__doc__.split("\n")[0])
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
  from medmoe_jax.training.faults import exit_codes
  sys.exit(exit_codes(main)())
