"""The decoder: embed -> segments of scanned blocks -> norm -> logits.

A model is a list of segments, each a homogeneous stack of blocks run by one `nnx.scan`
(compile time independent of depth). Post-MoE = [dense x (L-N), moe x N]; all-MoE = [moe x L];
dense baseline = [dense x L]; MoE-CT = [dense x L, appended x M]. Methods differ only in
`ModelSpec.segments`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medmoe_jax.model import chunked_head
from medmoe_jax.model.layers import (MLP, Attention, RMSNorm, as_rows, attention_mask,
                                     cached_attention_mask, constrain_batch, dtype_of, embed_lookup,
                                     normal_init)
from medmoe_jax.model.moe import MoEFeedForward
from medmoe_jax.model.spec import ModelSpec

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul outputs, recompute the cheap elementwise work.
    "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nnx.Module):
  """Pre-norm decoder block; the FFN is dense (SwiGLU) or a mixture of SwiGLU experts."""

  def __init__(self, spec: ModelSpec, kind: str, *, rngs: nnx.Rngs):
    pd = dtype_of(spec.param_dtype)
    self.kind = kind
    self.input_norm = RMSNorm(spec.d_model, spec.norm_eps, pd, rngs=rngs)
    self.attn = Attention(spec, rngs=rngs)
    self.post_attn_norm = RMSNorm(spec.d_model, spec.norm_eps, pd, rngs=rngs)
    self.ffn = MoEFeedForward(spec, rngs=rngs) if kind == "moe" else MLP(spec, rngs=rngs)

  def __call__(self, x, positions, mask, lang_ids, valid, *, train: bool, rng=None):
    h = x + self.attn(self.input_norm(x), positions, mask)
    z = self.post_attn_norm(h)
    if self.kind == "moe":
      y, aux = self.ffn(z, lang_ids, valid, train=train, rng=rng)
    else:
      y, aux = self.ffn(z), {}
    return h + y, aux

  def decode(self, x, positions, mask, lang_ids, valid, cache_k, cache_v, index, *,
             return_routing=False):
    """Inference through the KV cache (see `Transformer.decode`). Returns (x, cache_k, cache_v,
    aux); with return_routing, an MoE block's aux holds `expert_indices` [B, S, k],
    `router_probs` [B, S, E] (the router's softmax) and `dropped_fraction`."""
    a, cache_k, cache_v = self.attn.decode(self.input_norm(x), positions, mask, cache_k, cache_v,
                                           index)
    h = x + a
    z = self.post_attn_norm(h)
    aux = {}
    if self.kind == "moe":
      y, ffn_aux = self.ffn(z, lang_ids, valid, train=False)
      if return_routing:
        r = self.ffn.route_tokens(z, lang_ids)
        aux["expert_indices"] = r.indices.reshape(*z.shape[:2], -1)
        aux["router_probs"] = r.probs.reshape(*z.shape[:2], -1)
        aux["dropped_fraction"] = ffn_aux["dropped_fraction"]
    elif self.kind == "dense":
      y = self.ffn(z)
    else:
      raise NotImplementedError(f"Block.decode: no KV-cache path for block kind {self.kind!r}; "
                                "add one beside Block.__call__")
    return h + y, cache_k, cache_v, aux


class FusionGate(nnx.Module):
  """MoE-CT fusion, our interpretation (the paper publishes neither the attachment point nor the
  gate formula): out = base + g * (moe - base), with a per-token gate
  g = tanh(rms(base) . kernel + bias) in (-1, 1). kernel and bias start at zero, so g = 0 and the
  model equals its frozen base model exactly at step 0; both get gradients from the first step
  (d out / d bias = moe - base), and the appended blocks train once the gate opens."""

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    del rngs
    self.eps = spec.norm_eps
    self.kernel = nnx.Param(jnp.zeros((spec.d_model,), jnp.float32), out_sharding=("embed",))
    self.bias = nnx.Param(jnp.zeros((), jnp.float32), out_sharding=())

  def __call__(self, base, moe):
    """base, moe: [B, S, D] hidden states before / after the appended blocks -> [B, S, D]."""
    b32 = base.astype(jnp.float32)
    z = b32 * jax.lax.rsqrt(jnp.mean(b32 * b32, axis=-1, keepdims=True) + self.eps)
    g = jnp.tanh(z @ self.kernel[...] + self.bias[...])[..., None]  # [B, S, 1]
    return (b32 + g * (moe.astype(jnp.float32) - b32)).astype(base.dtype)


class Segment(nnx.Module):
  """`count` blocks of one kind with parameters stacked on a leading 'layers' axis. An "appended"
  segment (MoE-CT) is a stack of MoE blocks plus the FusionGate that mixes its output back into
  the hidden state it started from."""

  def __init__(self, spec: ModelSpec, kind: str, count: int, *, rngs: nnx.Rngs):
    self.kind, self.count, self.remat = kind, count, spec.remat
    self.unroll = count if spec.scan_unroll == 0 else min(spec.scan_unroll, count)
    block_kind = "moe" if kind == "appended" else kind

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(r):
      return Block(spec, block_kind, rngs=r)

    self.blocks = create(rngs)
    if kind == "appended":
      self.fusion = FusionGate(spec, rngs=rngs)

  def __call__(self, x, positions, mask, lang_ids, valid, *, train: bool, rng=None):
    keys = jax.random.split(rng, self.count) if rng is not None else jnp.zeros((self.count, 2), jnp.uint32)
    use_rng = rng is not None

    def body(h, block, key):
      h, aux = block(h, positions, mask, lang_ids, valid, train=train, rng=key if use_rng else None)
      return constrain_batch(h), aux

    policy = REMAT_POLICIES[self.remat]
    if self.remat != "none":
      body = nnx.remat(body, policy=policy)
    scan = nnx.scan(body, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0), unroll=self.unroll)
    y, aux = scan(x, self.blocks, keys)
    if self.kind == "appended":
      y = self.fusion(x, y)
    return y, aux

  def decode(self, x, positions, mask, lang_ids, valid, cache, index, *, return_routing=False):
    """cache: {"k", "v"} [count, B, T, KV, Dh] scanned with the blocks. Returns (x, cache, aux)."""

    def body(h, block, k, v):
      h, k, v, aux = block.decode(h, positions, mask, lang_ids, valid, k, v, index,
                                  return_routing=return_routing)
      return h, (k, v, aux)

    scan = nnx.scan(body, in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0))
    y, (k, v, aux) = scan(x, self.blocks, cache["k"], cache["v"])
    if self.kind == "appended":  # MoE-CT: the same gate as the training forward
      y = self.fusion(x, y)
    return y, {"k": k, "v": v}, aux


class Transformer(nnx.Module):

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    pd = dtype_of(spec.param_dtype)
    self.spec = spec
    self.embed = nnx.Embed(spec.vocab_size, spec.d_model, param_dtype=pd, dtype=dtype_of(spec.dtype),
                           embedding_init=normal_init(spec.init_std, ("vocab", "embed")), rngs=rngs)
    self.segments = nnx.List([Segment(spec, kind, n, rngs=rngs) for kind, n in spec.segments])
    self.final_norm = RMSNorm(spec.d_model, spec.norm_eps, pd, rngs=rngs)
    if not spec.tie_embeddings:
      self.lm_head = nnx.Linear(spec.d_model, spec.vocab_size, use_bias=False, param_dtype=pd,
                                dtype=dtype_of(spec.dtype),
                                kernel_init=normal_init(spec.init_std, ("embed", "vocab")), rngs=rngs)

  def hidden_states(self, tokens, segment_ids, positions, lang_ids, *, train=False, rng=None):
    """tokens etc.: [B, S] int32 -> (final hidden [B, S, D], moe aux stacked over MoE layers)."""
    x = embed_lookup(self.embed, tokens, dtype_of(self.spec.dtype))
    mask = attention_mask(segment_ids)
    valid = segment_ids > 0
    moe_aux = []
    seg_rngs = jax.random.split(rng, len(self.segments)) if rng is not None else [None] * len(self.segments)
    for seg, r in zip(self.segments, seg_rngs):
      x, aux = seg(x, positions, mask, lang_ids, valid, train=train, rng=r)
      if seg.kind != "dense":
        moe_aux.append(aux)
    aux = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *moe_aux) if moe_aux else {}
    return self.final_norm(x), aux

  def logits(self, h):
    """h: [B, S, D] -> [B, S, V] float32 (computed on [B*S, D] rows, see layers.as_rows)."""
    rows = as_rows(h)
    out = self.embed.attend(rows) if self.spec.tie_embeddings else self.lm_head(rows)
    return out.astype(jnp.float32).reshape(*h.shape[:-1], -1)

  def token_nll(self, h, targets):
    """h: [B, S, D] final hidden states, targets: [B, S] int -> each target's float32 negative
    log-likelihood [B, S], through the LM head a chunk of `spec.loss_chunk` positions at a time:
    the full [B, S, V] logits are never held (model/chunked_head.py)."""
    dt = dtype_of(self.spec.dtype)
    if self.spec.tie_embeddings:
      w, transposed = self.embed.embedding[...].astype(dt), True   # [V, D]
    else:
      w, transposed = self.lm_head.kernel[...].astype(dt), False   # [D, V]
    return chunked_head.token_nll(h.astype(dt), w, targets, self.spec.loss_chunk, transposed)

  def __call__(self, tokens, segment_ids, positions, lang_ids, *, train=False, rng=None):
    """Returns (logits [B, S, V] float32, aux) where aux maps names to [num_moe_layers, ...]."""
    h, aux = self.hidden_states(tokens, segment_ids, positions, lang_ids, train=train, rng=rng)
    return self.logits(h), aux

  # --- Inference with a KV cache (generate.py, evaluation). The training forward is untouched.

  def init_cache(self, batch: int, length: int) -> dict:
    """An empty KV cache for `batch` rows of `length` slots: per segment k/v
    [count, B, T, KV, Dh] in the compute dtype, and the slots' segment ids [B, T] (0 = empty)."""
    dt, s = dtype_of(self.spec.dtype), self.spec
    shape = lambda n: (n, batch, length, s.num_kv_heads, s.head_dim)
    return {"segment_ids": jnp.zeros((batch, length), jnp.int32),
            "layers": [{"k": jnp.zeros(shape(n), dt), "v": jnp.zeros(shape(n), dt)}
                       for _, n in s.segments]}

  def decode(self, tokens, segment_ids, positions, lang_ids, cache, index, *, last_only=False,
             return_routing=False):
    """Runs S new tokens [B, S] (written at cache slots [index, index + S), the same slots for
    every row) through the model with a KV cache. A prefill into a fresh cache equals the
    training forward (`__call__`, train=False); later calls with S=1 decode one token a step.
    Returns (logits [B, S or 1, V] float32, cache, aux); with return_routing, aux holds
    "expert_indices" [num_moe_layers, B, S, k], "router_probs" [num_moe_layers, B, S, E] and
    "dropped_fraction" [num_moe_layers]."""
    x = self.embed(tokens).astype(dtype_of(self.spec.dtype))
    cache_seg = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32),
                                             (0, index))
    mask = cached_attention_mask(segment_ids, cache_seg, index)
    valid = segment_ids > 0
    layers, moe_aux = [], []
    for seg, layer_cache in zip(self.segments, cache["layers"]):
      x, layer_cache, aux = seg.decode(x, positions, mask, lang_ids, valid, layer_cache, index,
                                       return_routing=return_routing)
      layers.append(layer_cache)
      if aux:
        moe_aux.append(aux)
    h = self.final_norm(x)
    if last_only:
      h = h[:, -1:]
    aux = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *moe_aux) if moe_aux else {}
    return self.logits(h), {"segment_ids": cache_seg, "layers": layers}, aux
