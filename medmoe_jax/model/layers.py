"""Dense building blocks of a Qwen2/Llama-style decoder.

Every parameter carries logical axis names (`axis_rules.RULES` maps them to mesh axes):
  vocab, embed, mlp, heads, kv_heads, head_dim, expert, layers (added by the scan).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from flax import nnx

from medmoe_jax.model import axis_rules
from medmoe_jax.model.spec import ModelSpec

# Parameter sharding is applied by jitting the initialiser with out_shardings derived from these
# logical names (sharding.py); Flax's eager sharding would require a mesh inside the model.
nnx.use_eager_sharding(False)


def constrain_batch(x):
  """x: [B, ...] -> the same, its batch dim pinned to the mesh axes of "batch" (axis_rules) on
  the mesh the trainer activates around tracing (sharding.on_mesh); a no-op without one (tests,
  eval on one device). Without this, XLA's propagation may all-gather FSDP activations over the
  batch instead of gathering the weights: every device would hold the whole batch's activations."""
  return axis_rules.constrain(x, ("batch",) + (None,) * (x.ndim - 1))


def embed_lookup(embed, tokens, dtype):
  """embed (nnx.Embed): the rows of `tokens` [B, S] -> [B, S, D] in `dtype`, batch pinned as
  `constrain_batch` pins it. Under a mesh that splits the table's "embed" dim the lookup's output
  is first sharded as the FSDP table gives it ("lookup_batch", "length", "embed": the batch over
  the batch axes other than fsdp, D over fsdp), so the step to the batch sharding is an
  all-to-all within each fsdp group. Without that step the backward's scatter-add into the
  D-sharded table asked for its cotangent with the batch replicated, which XLA's partitioner
  reached from batch-sharded activations only by gathering the whole batch's [B, S, D] on every
  device ("involuntary full rematerialization"): with data and fsdp both > 1, 2 GB more
  temporaries per device for the 7b dry run on 64 chips (BENCHMARKS.md, "Embedding lookup under
  FSDP")."""
  x = embed(tokens).astype(dtype)
  mesh = axis_rules.current_mesh()
  if mesh is not None:
    table = axis_rules.activation_spec(("lookup_batch", "length", "embed"), mesh)
    if table[2] is not None:
      x = jax.lax.with_sharding_constraint(x, table)
  return constrain_batch(x)


def as_rows(x):
  """[..., F] -> [T, F]. Projections run on 2-D rows: XLA's CPU dot emitter takes a slower path
  when the weight gradient contracts two dims (batch and sequence) of a 3-D activation, 1.6x
  at the benchmark shape (BENCHMARKS.md); on TPU/GPU the reshape is free."""
  return x.reshape(-1, x.shape[-1])


def dtype_of(name: str):
  return jnp.dtype(name)


def normal_init(std: float, axes: tuple):
  return nnx.with_partitioning(nnx.initializers.normal(std), axes)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, param_dtype, *, axis: str = "embed", rngs: nnx.Rngs):
    del rngs
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=(axis,))

  def __call__(self, x):
    # Normalise in float32 whatever the compute dtype (bf16 variance underflows).
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(dh: int, theta: float, scaling: tuple = ()) -> np.ndarray:
  """RoPE's inverse frequencies [Dh/2] (float32), as transformers' modeling_rope_utils computes
  them for rope_type "default", "linear" (positions divided by `factor`) and "llama3" (Llama
  3.1+: low frequencies divided by `factor`, a smooth ramp between `low_freq_factor` and
  `high_freq_factor` wavelengths of `original_max_position_embeddings`). `scaling` is
  ModelSpec.rope_scaling: sorted (key, value) pairs, () for default."""
  inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, dh, 2).astype(np.float32) / np.float32(dh))))
  inv_freq = inv_freq.astype(np.float32)
  p = dict(scaling)
  kind = p.get("rope_type", "default")
  if kind == "default":
    return inv_freq
  factor = np.float32(p["factor"])
  if kind == "linear":
    return inv_freq / factor
  if kind != "llama3":
    raise ValueError(f"rope_type {kind!r} is not implemented; use one of {ROPE_TYPES}")
  old = np.float32(p["original_max_position_embeddings"])
  low, high = np.float32(p["low_freq_factor"]), np.float32(p["high_freq_factor"])
  wavelen = np.float32(2 * np.pi) / inv_freq
  scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
  smooth = (old / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < old / high) & ~(wavelen > old / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope(x, positions, theta: float, scaling: tuple = ()):
  """Rotary embedding, half-split convention (HF `rotate_half`). x: [B, S, H, Dh]; positions:
  [B, S]; scaling: see `rope_inv_freq`."""
  dh = x.shape[-1]
  inv_freq = jnp.asarray(rope_inv_freq(dh, theta, scaling))  # [Dh/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, Dh/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : dh // 2], x32[..., dh // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attention_mask(segment_ids):
  """[B, 1, S, S] bool: causal and within the same packed segment (no cross-document attention).

  Padding (segment 0) attends only to padding, so no row is empty and softmax stays finite."""
  s = segment_ids.shape[-1]
  causal = jnp.tril(jnp.ones((s, s), dtype=bool))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return (causal[None] & same)[:, None]


def cached_attention_mask(segment_ids, cache_segment_ids, index):
  """[B, 1, S, T] bool for S new tokens written at cache slots [index, index + S).

  Query i (slot index + i) sees cache slot j <= index + i of the same segment: the training mask
  (`attention_mask`) over cache slots, so a prefill into a fresh cache reproduces the training
  forward, padding (segment 0) included. segment_ids: [B, S]; cache_segment_ids: [B, T], already
  holding the new tokens' segments."""
  s, t = segment_ids.shape[-1], cache_segment_ids.shape[-1]
  causal = jnp.arange(t)[None, :] <= (index + jnp.arange(s))[:, None]  # [S, T]
  same = segment_ids[:, :, None] == cache_segment_ids[:, None, :]
  return (causal[None] & same)[:, None]


def query_blocks(seq: int) -> int:
  """How many query blocks `causal_attention` splits a sequence into: 4 where each block keeps at
  least 64 queries (fewer blocks otherwise), so the matmuls stay large."""
  return next(n for n in (4, 2, 1) if n == 1 or (seq % n == 0 and seq // n >= 64))


def causal_attention(q, k, v, mask):
  """Grouped-query attention under a causal mask, skipping the key blocks above the diagonal.

  q: [B, S, H, Dh]; k, v: [B, S, KV, Dh]; mask: [B, 1, S, S] bool that is causal (and anything
  narrower, e.g. same-segment). Query block i of n attends only to keys [0, (i + 1) S / n): the
  rest of its row is masked anyway, so the result equals full attention under `mask` while the
  score matmuls, softmax and their gradients shrink to (n + 1) / 2n of the work (5/8 at n = 4).
  On CPU this is about 2x faster than jax.nn.dot_product_attention at S = 512 (BENCHMARKS.md).
  Returns [B, S, H, Dh] in q's dtype; softmax in float32."""
  b, s, h, dh = q.shape
  kv = k.shape[2]
  n = query_blocks(s)
  sq = s // n
  # Heads in front so each einsum is a plain batched matmul over (batch, kv head[, group]).
  qt = jnp.transpose(q.reshape(b, s, kv, h // kv, dh), (0, 2, 3, 1, 4)) * jnp.asarray(dh ** -0.5, q.dtype)
  kt = jnp.transpose(k, (0, 2, 1, 3))  # [B, KV, S, Dh]
  vt = jnp.transpose(v, (0, 2, 1, 3))
  # An additive bias (one pass over the mask per call) and the softmax's normalisation applied
  # to the [.., q, Dh] output instead of the [.., q, keys] probabilities: two fewer passes over
  # the score tensor, forward and backward, 25% off the attention core on CPU. Every row keeps
  # its diagonal, so the max is finite and masked keys get exp(-1e30 - max) = 0 exactly.
  bias = jnp.where(mask, 0.0, -1e30).astype(jnp.float32)[:, :, None]  # [B, 1, 1, S, S]
  outs = []
  for i in range(n):
    lo, hi = i * sq, (i + 1) * sq
    scores = jnp.einsum("bkgqd,bksd->bkgqs", qt[:, :, :, lo:hi], kt[:, :, :hi],
                        preferred_element_type=jnp.float32) + bias[..., lo:hi, :hi]
    # The shift cancels in the softmax; stopping its gradient keeps autodiff from tracing it.
    shifted = scores - lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    probs = jnp.exp(shifted)
    norm = jnp.sum(probs, axis=-1, keepdims=True)                    # [B, KV, G, q, 1]
    out = jnp.einsum("bkgqs,bksd->bkgqd", probs.astype(v.dtype), vt[:, :, :hi],
                     preferred_element_type=jnp.float32)
    outs.append((out / norm).astype(q.dtype))
  out = jnp.concatenate(outs, axis=3) if n > 1 else outs[0]  # [B, KV, G, S, Dh]
  return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, s, h, dh)


class Attention(nnx.Module):

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    pd = dtype_of(spec.param_dtype)
    d, h, kv, dh = spec.d_model, spec.num_heads, spec.num_kv_heads, spec.head_dim
    self.spec = spec
    init = lambda axes: normal_init(spec.init_std, axes)
    self.q_proj = nnx.LinearGeneral(d, (h, dh), use_bias=spec.qkv_bias, param_dtype=pd, dtype=dtype_of(spec.dtype),
                                    kernel_init=init(("embed", "heads", "head_dim")),
                                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("heads", "head_dim")),
                                    rngs=rngs)
    self.k_proj = nnx.LinearGeneral(d, (kv, dh), use_bias=spec.qkv_bias, param_dtype=pd, dtype=dtype_of(spec.dtype),
                                    kernel_init=init(("embed", "kv_heads", "head_dim")),
                                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("kv_heads", "head_dim")),
                                    rngs=rngs)
    self.v_proj = nnx.LinearGeneral(d, (kv, dh), use_bias=spec.qkv_bias, param_dtype=pd, dtype=dtype_of(spec.dtype),
                                    kernel_init=init(("embed", "kv_heads", "head_dim")),
                                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("kv_heads", "head_dim")),
                                    rngs=rngs)
    self.o_proj = nnx.LinearGeneral((h, dh), d, axis=(-2, -1), use_bias=False, param_dtype=pd, dtype=dtype_of(spec.dtype),
                                    kernel_init=init(("heads", "head_dim", "embed")), rngs=rngs)
    if spec.qk_norm:  # Qwen3: RMSNorm over each head's q and k before RoPE
      self.q_norm = RMSNorm(dh, spec.norm_eps, pd, axis="head_dim", rngs=rngs)
      self.k_norm = RMSNorm(dh, spec.norm_eps, pd, axis="head_dim", rngs=rngs)

  def __call__(self, x, positions, mask):
    """x: [B, S, D] -> [B, S, D]."""
    q, k, v = self._qkv(x, positions)
    return self._out(causal_attention(q, k, v, mask), x)

  def _qkv(self, x, positions):
    """x: [B, S, D] -> q [B, S, H, Dh], k, v [B, S, KV, Dh] (rope applied to q and k)."""
    dt, (b, s, _) = x.dtype, x.shape
    rows = as_rows(x)
    heads = lambda proj: proj(rows).astype(dt).reshape(b, s, *proj.kernel[...].shape[1:])
    q, k = heads(self.q_proj), heads(self.k_proj)
    if self.spec.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q = rope(q, positions, self.spec.rope_theta, self.spec.rope_scaling)
    k = rope(k, positions, self.spec.rope_theta, self.spec.rope_scaling)
    return q, k, heads(self.v_proj)

  def _out(self, attn, x):
    """attn: [B, S, H, Dh] -> [B, S, D] in x's dtype."""
    b, s, h, dh = attn.shape
    return self.o_proj(attn.reshape(b * s, h, dh)).astype(x.dtype).reshape(x.shape)

  def decode(self, x, positions, mask, cache_k, cache_v, index):
    """KV-cached attention (generation, evaluation). x: [B, S, D] new tokens; cache_k/v:
    [B, T, KV, Dh]. Writes the new keys/values at slots [index, index + S) and attends over the
    whole cache under `mask` [B, 1, S, T] (`cached_attention_mask`).
    Returns (out [B, S, D], cache_k, cache_v)."""
    dt = x.dtype
    q, k, v = self._qkv(x, positions)
    cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
    cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
    out = jax.nn.dot_product_attention(q, cache_k.astype(dt), cache_v.astype(dt), mask=mask)
    return self._out(out, x), cache_k, cache_v


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x)); width `d_ff` (default spec.d_ff; an MoE
  layer's shared expert passes its own)."""

  def __init__(self, spec: ModelSpec, *, d_ff: int | None = None, rngs: nnx.Rngs):
    pd = dtype_of(spec.param_dtype)
    f = d_ff or spec.d_ff
    init = lambda axes: normal_init(spec.init_std, axes)
    self.gate_proj = nnx.Linear(spec.d_model, f, use_bias=False, param_dtype=pd, dtype=dtype_of(spec.dtype),
                                kernel_init=init(("embed", "mlp")), rngs=rngs)
    self.up_proj = nnx.Linear(spec.d_model, f, use_bias=False, param_dtype=pd, dtype=dtype_of(spec.dtype),
                              kernel_init=init(("embed", "mlp")), rngs=rngs)
    self.down_proj = nnx.Linear(f, spec.d_model, use_bias=False, param_dtype=pd, dtype=dtype_of(spec.dtype),
                                kernel_init=init(("mlp", "embed")), rngs=rngs)

  def __call__(self, x):
    dt, rows = x.dtype, as_rows(x)
    h = jax.nn.silu(self.gate_proj(rows).astype(dt)) * self.up_proj(rows).astype(dt)
    return self.down_proj(h).astype(dt).reshape(x.shape)
