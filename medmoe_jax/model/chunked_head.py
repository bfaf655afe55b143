"""The LM head and its cross-entropy, a chunk of sequence positions at a time.

Full float32 logits are [B, S, V]: 80 GB for the `0.5b` config's batch (32 x 4096 tokens, vocab
151,936) before their gradient. `token_nll` computes each token's negative log-likelihood from
the final hidden states without ever holding more than one chunk's logits ([B, c, V]): the
forward pass keeps only each token's log-normaliser, and the backward pass recomputes a chunk's
logits to form its softmax gradient (one extra head matmul, the price of not storing them). The
weight gradient accumulates over chunks in float32. A sequence that fits in one chunk keeps its
logits for the backward pass instead, as the unchunked loss did: no recompute.

Chunks run along the sequence, so every chunk keeps the batch's sharding over the mesh.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def chunk_length(seq_len: int, chunk: int) -> int:
  """Positions per chunk: the largest divisor of seq_len that is <= chunk (0 = the whole
  sequence in one chunk)."""
  if chunk <= 0 or chunk >= seq_len:
    return seq_len
  return max(d for d in range(1, chunk + 1) if seq_len % d == 0)


def token_nll(h, w, targets, chunk: int, transposed: bool = False):
  """h: [B, S, D] final hidden states (compute dtype); w: the head kernel [D, V] in the compute
  dtype, or [V, D] with transposed=True (tied embeddings); targets: [B, S] int. Returns the
  float32 negative log-likelihood of each target, [B, S]; equal to optax's
  softmax_cross_entropy_with_integer_labels on the full float32 logits."""
  return _token_nll(h, w, targets, chunk_length(h.shape[1], chunk), transposed)


def _logits(hc, w, transposed):
  """[B, c, D] -> [B*c, V] float32 (on rows: see layers.as_rows)."""
  rows = hc.reshape(-1, hc.shape[-1])
  dims = ((1,), (1,) if transposed else (0,))
  return lax.dot_general(rows, w, (dims, ((), ()))).astype(jnp.float32)


def _chunks(h, c):
  return h.shape[1] // c


def _forward(h, w, targets, c, transposed):
  b = h.shape[0]

  def one(i, _):
    hc = lax.dynamic_slice_in_dim(h, i * c, c, axis=1)
    tc = lax.dynamic_slice_in_dim(targets, i * c, c, axis=1).reshape(-1)
    logits = _logits(hc, w, transposed)
    # The same arithmetic as optax.softmax_cross_entropy_with_integer_labels.
    top = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - top
    lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
    label = jnp.take_along_axis(shifted, tc[:, None], axis=-1)[:, 0]
    return i + 1, (lse - label, lse + top[:, 0])

  _, (nll, lse) = lax.scan(one, 0, None, length=_chunks(h, c))
  # [n, B*c] -> [B, S]
  back = lambda a: jnp.swapaxes(a.reshape(-1, b, c), 0, 1).reshape(b, -1)
  return back(nll), back(lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _token_nll(h, w, targets, c, transposed):
  return _forward(h, w, targets, c, transposed)[0]


def _fwd(h, w, targets, c, transposed):
  if _chunks(h, c) == 1:  # one chunk: keep its logits (no larger than a chunk) for the backward
    logits = _logits(h, w, transposed)
    top = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - top
    lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
    label = jnp.take_along_axis(shifted, targets.reshape(-1, 1), axis=-1)[:, 0]
    return (lse - label).reshape(targets.shape), (h, w, targets, jnp.exp(shifted - lse[:, None]))
  nll, lse = _forward(h, w, targets, c, transposed)
  return nll, (h, w, targets, lse)


def _bwd(c, transposed, res, g):
  h, w, targets, lse = res
  b, _, d = h.shape
  if _chunks(h, c) == 1:  # `lse` holds the only chunk's softmax
    dh, dw = _chunk_grads(h, w, targets.reshape(-1), g.reshape(-1, 1), lse, transposed)
    return dh, dw.astype(w.dtype), None

  def one(carry, _):
    i, dh, dw = carry
    hc = lax.dynamic_slice_in_dim(h, i * c, c, axis=1)
    tc = lax.dynamic_slice_in_dim(targets, i * c, c, axis=1).reshape(-1)
    gc = lax.dynamic_slice_in_dim(g, i * c, c, axis=1).reshape(-1, 1)
    lc = lax.dynamic_slice_in_dim(lse, i * c, c, axis=1).reshape(-1, 1)
    p = jnp.exp(_logits(hc, w, transposed) - lc)
    dhc, dwc = _chunk_grads(hc, w, tc, gc, p, transposed)
    dh = lax.dynamic_update_slice_in_dim(dh, dhc.astype(dh.dtype), i * c, axis=1)
    return (i + 1, dh, dw + dwc), None

  init = (0, jnp.zeros_like(h), jnp.zeros(w.shape, jnp.float32))
  (_, dh, dw), _ = lax.scan(one, init, None, length=_chunks(h, c))
  return dh, dw.astype(w.dtype), None


def _chunk_grads(hc, w, tc, gc, p, transposed):
  """Gradients of sum(g * nll) over one chunk: hc [B, c, D], tc [B*c] targets, gc [B*c, 1]
  cotangents, p [B*c, V] float32 softmax. Returns dh [B, c, D] and the float32 dw."""
  onehot = lax.broadcasted_iota(jnp.int32, p.shape, 1) == tc[:, None]
  dlogits = (gc * (p - onehot)).astype(hc.dtype)                     # [B*c, V]
  rows = hc.reshape(-1, hc.shape[-1])
  if transposed:  # logits = rows @ w.T, w: [V, D]
    dh = dlogits @ w
    dw = lax.dot_general(dlogits, rows, (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)        # [V, D]
  else:           # logits = rows @ w, w: [D, V]
    dh = lax.dot_general(dlogits, w, (((1,), (1,)), ((), ())))
    dw = lax.dot_general(rows, dlogits, (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)        # [D, V]
  return dh.reshape(hc.shape), dw


_token_nll.defvjp(_fwd, _bwd)
