"""Plain, hashable model specifications.

The model package never sees ml_collections or files: `medmoe_jax.config` turns a validated
ConfigDict into these frozen dataclasses, and the modules read only them.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

# "appended": MoE-CT (our interpretation): MoE blocks after the last base block whose output is
# fused with the base hidden state by a learned gate that starts closed (see transformer.py).
SegmentKind = Literal["dense", "moe", "appended"]

# The device mesh's axes (medmoe_jax.sharding builds the mesh; the model only names them): data
# (pure data parallel), fsdp (data parallel + parameter sharding), expert (experts' weights; the
# batch is split over it too), tensor (heads / FFN width).
MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_MESH_AXES = ("data", "fsdp", "expert")  # the axes a batch is split over
EXPERT_AXIS = "expert"
TENSOR_AXIS = "tensor"

# The allowed values of the MoE settings; config validation and the model read these lists.
LANGUAGE_ROUTING = ("hybrid", "hard", "specific", "none")
BACKENDS = ("auto", "dropless", "capacity", "dense")  # "auto" = "dropless"
GROUPED_MATMUL_KERNELS = ("chunked", "ragged_dot", "megablox", "tokamax")
GROUPED_MATMULS = ("auto", *GROUPED_MATMUL_KERNELS)  # "auto": the platform's (gmm.default_impl)


@dataclasses.dataclass(frozen=True)
class MoESpec:
  num_experts: int = 7
  top_k: int = 2
  d_ff: int = 512
  # Apollo-MoE: softmax over all experts, top-k, weights NOT renormalised.
  norm_topk: bool = False
  # "hybrid": force the token's own expert into the top-k during training (Apollo-MoE hybrid-k);
  # "hard": top-1 to the language expert with weight 1; "none": plain learned routing.
  language_routing: Literal["hybrid", "hard", "specific", "none"] = "hybrid"
  # lang_id -> expert id (index = lang_id in config.languages.use); empty when unused.
  lang_to_expert: tuple[int, ...] = ()
  # lang_id -> 1 if the language is "original" (MoE-LPR: routed to the frozen expert 0).
  lang_is_original: tuple[int, ...] = ()
  router_init_std: float = 0.02
  # Dispatch backend: "dropless" (sort by expert + grouped matmul), "capacity" (static shapes,
  # drops over capacity), "dense" (every expert on every token; exact reference), "auto"
  # (dropless; see BENCHMARKS.md).
  backend: str = "auto"
  # Dropless grouped matmul: "chunked" (CPU), "megablox" (TPU), "ragged_dot", "auto" (per platform).
  grouped_matmul: str = "auto"
  capacity_factor_train: float = 2.0
  capacity_factor_eval: float = 4.0
  jitter: float = 0.0
  # A shared expert every token goes through, added to the routed experts' output (Qwen2-MoE's
  # `shared_expert`): its SwiGLU width (0 = none) and whether a sigmoid gate, Linear(D -> 1),
  # scales its output per token (Qwen2-MoE's `shared_expert_gate`).
  shared_d_ff: int = 0
  shared_gate: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  vocab_size: int = 4096
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 32
  d_ff: int = 512
  qkv_bias: bool = True
  tie_embeddings: bool = True
  rope_theta: float = 10000.0
  # RoPE frequency scaling as sorted (key, value) pairs, () = plain RoPE; e.g. Llama 3.1+'s
  # (("factor", 32.0), ("high_freq_factor", 4.0), ..., ("rope_type", "llama3")). layers.rope.
  rope_scaling: tuple = ()
  qk_norm: bool = False         # Qwen3: per-head RMSNorm on q and k (before RoPE)
  norm_eps: float = 1e-6
  init_std: float = 0.02
  dtype: str = "float32"        # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of parameters
  remat: Literal["none", "full", "save_dots"] = "none"
  scan_unroll: int = 1          # layers per scan iteration; 0 = fully unrolled
  # Sequence positions per chunk of the LM head + cross-entropy in the training loss (0 = the
  # whole sequence at once); bounds the logits held at once to [B, loss_chunk, V].
  loss_chunk: int = 512
  # Homogeneous runs of blocks, each run executed as one scan: ((kind, count), ...).
  segments: tuple[tuple[SegmentKind, int], ...] = (("dense", 2), ("moe", 2))
  moe: MoESpec = dataclasses.field(default_factory=MoESpec)

  @property
  def moe_layer_indices(self) -> tuple[int, ...]:
    out, i = [], 0
    for kind, count in self.segments:
      if kind in ("moe", "appended"):
        out.extend(range(i, i + count))
      i += count
    return tuple(out)


def parse_moe_layers(spec: str | list | tuple, num_layers: int) -> tuple[int, ...]:
  """Which layers are MoE: "last:N", "first:N", "all", "none", "every:K" (layers K-1, 2K-1, ...),
  or an explicit list/comma string of indices. Raises ValueError on nonsense."""
  if isinstance(spec, (list, tuple)):
    idx = [int(i) for i in spec]
  else:
    s = str(spec).strip().lower()
    if s == "all":
      idx = list(range(num_layers))
    elif s in ("none", ""):
      idx = []
    elif s.startswith("last:"):
      n = int(s.split(":", 1)[1])
      if not 0 <= n <= num_layers:
        raise ValueError(f"config.moe.layers={spec!r}: N={n} must be in [0, {num_layers}] "
                         f"(model.num_layers={num_layers})")
      idx = list(range(num_layers - n, num_layers))
    elif s.startswith("first:"):
      n = int(s.split(":", 1)[1])
      if not 0 <= n <= num_layers:
        raise ValueError(f"config.moe.layers={spec!r}: N={n} must be in [0, {num_layers}]")
      idx = list(range(n))
    elif s.startswith("every:"):
      k = int(s.split(":", 1)[1])
      if k < 1:
        raise ValueError(f"config.moe.layers={spec!r}: K must be >= 1")
      idx = list(range(k - 1, num_layers, k))
    else:
      try:
        idx = [int(t) for t in s.replace("[", "").replace("]", "").split(",") if t.strip()]
      except ValueError:
        raise ValueError(
            f"config.moe.layers={spec!r} is not understood; use 'last:N', 'first:N', 'all', "
            "'none', 'every:K' or a list of layer indices like '2,3'") from None
  bad = [i for i in idx if not 0 <= i < num_layers]
  if bad:
    raise ValueError(f"config.moe.layers={spec!r}: layer index {bad[0]} is out of range for "
                     f"model.num_layers={num_layers} (valid: 0..{num_layers - 1})")
  if len(set(idx)) != len(idx):
    raise ValueError(f"config.moe.layers={spec!r} lists a layer twice")
  return tuple(sorted(idx))


def segments_for(num_layers: int, moe_layers: tuple[int, ...],
                 appended: int = 0) -> tuple[tuple[str, int], ...]:
  """Group layers into maximal homogeneous runs: Post-MoE last:2 of 24 -> (dense 22, moe 2).
  appended > 0 adds MoE-CT's appended MoE blocks after the last base layer: (dense 24, appended M)."""
  kinds = ["moe" if i in set(moe_layers) else "dense" for i in range(num_layers)]
  segs: list[list] = []
  for k in kinds:
    if segs and segs[-1][0] == k:
      segs[-1][1] += 1
    else:
      segs.append([k, 1])
  if appended:
    segs.append(["appended", appended])
  return tuple((k, n) for k, n in segs)
