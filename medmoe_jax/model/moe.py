"""The MoE feed-forward block and its dispatch backends.

Routing decisions come from `routing.py` (pure math); this module moves tokens to experts and
back. Backends, chosen by `MoESpec.backend`:
  dense     every expert runs on every token, outputs combined by the (sparse) routing weights.
            Exact and simple; cost grows with E. The reference the others are tested against.
  capacity  per sequence (group), each expert takes at most C = ceil(cf * S * k / E) token-slots
            (first choices before second choices); the rest are dropped (their MoE output is 0,
            the residual carries them). Dispatch is an index gather/scatter, never a
            [tokens, experts, capacity] one-hot tensor, and static shapes suit XLA on all platforms.
            Groups are sequences, so what is dropped does not depend on how the batch is sharded.
  dropless  token-slots sorted by expert, one grouped SwiGLU over the sorted rows (`gmm.py`:
            chunked loop on CPU, megablox on TPU, ragged_dot elsewhere), unsorted and combined.
            Nothing is dropped.
  auto      dropless: fastest measured on CPU (BENCHMARKS.md) and drops nothing on any platform;
            only the grouped-matmul kernel differs per platform (`MoESpec.grouped_matmul`).

Every dispatch function works on the tokens it is given ([G, S, ...]) and, inside shard_map,
takes `ep` (the expert mesh axis) to exchange tokens with the devices holding the other experts;
`expert_parallel.py` decides where it runs. Each returns (y, kept_slots, routed_slots).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from medmoe_jax.model import expert_parallel, gmm, routing
from medmoe_jax.model.expert_parallel import ExpertAxis
from medmoe_jax.model.layers import MLP, as_rows, dtype_of, normal_init
from medmoe_jax.model.spec import BACKENDS, GROUPED_MATMULS, ModelSpec


def resolve_backend(name: str, platform: str | None = None, grouped_matmul: str = "auto") -> str:
  """`auto` is dropless, except on a GPU without tokamax (the `gpu` extra) when no grouped
  matmul is named (grouped_matmul='auto'): there it is dense.
  Both drop nothing and give the same outputs; the only grouped matmuls XLA has on GPU without
  tokamax are ragged_dot (zero-pads every group to all rows: every expert's FLOPs on every row,
  at a fraction of cuBLAS's speed, and an [E, rows, D]-sized buffer) and the chunked CPU loop
  (dozens of small matmuls per layer, each behind a device-side loop step). The dense backend
  does the same E/k x FLOPs as padded ragged_dot but as one [tokens, D] x [D, E * d_ff] cuBLAS
  matmul per projection, with no sort and no gather. The capacity backend (MaxText's GPU path)
  would do fewer FLOPs only by dropping tokens, which `auto` must not start doing because a
  package is missing."""
  if name == "auto":
    if (grouped_matmul == "auto" and (platform or jax.default_backend()) == "gpu"
        and not gmm.tokamax_available()):
      return "dense"
    return "dropless"
  if name not in BACKENDS:
    raise ValueError(f"config.moe.backend={name!r}; choose one of {BACKENDS}")
  return name


def resolve_grouped_matmul(name: str, platform: str | None = None) -> str:
  if name == "auto":
    return gmm.default_impl(platform or jax.default_backend())
  if name not in gmm.IMPLS:
    raise ValueError(f"config.moe.grouped_matmul={name!r}; choose one of {GROUPED_MATMULS}")
  return name


def kernel_note(m, platform: str) -> str | None:
  """A one-line note when MoESpec `m` runs a grouped-matmul kernel that is slow on `platform`
  (it works, only slowly; BENCHMARKS.md), else None."""
  backend = resolve_backend(m.backend, platform, m.grouped_matmul)
  if m.backend == "auto" and backend == "dense":
    return ("note: config.moe.backend='auto' runs the dense backend on this GPU (every expert "
            "on every token, exact): install tokamax (pip install 'medmoe_jax[gpu]') for a "
            "grouped matmul over the routed tokens only")
  if backend != "dropless":
    return None
  impl = resolve_grouped_matmul(m.grouped_matmul, platform)
  if impl == "megablox" and platform != "tpu":
    why = "runs in the Pallas interpreter off TPU: exact, but many times slower"
  elif impl == "chunked" and platform != "cpu":
    why = f"is the CPU kernel: on {platform} it runs as a loop of small matmuls"
  elif impl == "ragged_dot" and platform in ("cpu", "gpu"):
    why = (f"on {platform.upper()} computes every group over all rows: its cost grows with the "
           "expert count")
  elif impl == "tokamax" and not gmm.tokamax_available():
    why = "is not installed (pip install 'medmoe_jax[gpu]'); the step will fail to build"
  else:
    return None
  return (f"note: config.moe.grouped_matmul={impl!r} {why}; 'auto' picks "
          f"{gmm.default_impl(platform)!r} here")


def capacity_per_group(tokens_per_group: int, top_k: int, num_experts: int, factor: float) -> int:
  c = math.ceil(factor * tokens_per_group * top_k / num_experts)
  return max(1, min(c, tokens_per_group))


def _gather_batch(a, ep: ExpertAxis | None):
  """All-gather the batch shards of the expert axis: [G, ...] -> [size*G, ...]."""
  return a if ep is None else lax.all_gather(a, ep.name, axis=0, tiled=True)


def _reduce_scatter_batch(y, ep: ExpertAxis | None):
  """Sum the partial outputs of all expert shards and keep this device's batch shard."""
  return y if ep is None else lax.psum_scatter(y, ep.name, scatter_dimension=0, tiled=True)


def _expert_offset(num_local: int, ep: ExpertAxis | None):
  return 0 if ep is None else lax.axis_index(ep.name) * num_local


def swiglu_experts(xe, wi_gate, wi_up, wo):
  """xe: [E, R, D] (expert-major, so the batched matmuls need no transposes); weights
  [E, D, F], [E, F, D] -> [E, R, D]."""
  dt = xe.dtype
  g = jnp.einsum("erd,edf->erf", xe, wi_gate.astype(dt))
  u = jnp.einsum("erd,edf->erf", xe, wi_up.astype(dt))
  return jnp.einsum("erf,efd->erd", jax.nn.silu(g) * u, wo.astype(dt))


def dense_dispatch(x, indices, weights, valid, weights_e, ep: ExpertAxis | None = None):
  """x: [G, T, D]; indices/weights: [G, T, k]. Every (local) expert on every token; with expert
  parallelism each device runs its experts on the whole expert-axis batch (all-gather) and the
  partial outputs are summed back to their shard (reduce-scatter)."""
  wi_gate, wi_up, wo = weights_e
  el = wi_gate.shape[0]
  routed = jnp.sum(valid) * indices.shape[-1]
  x, indices, weights, valid = (_gather_batch(a, ep) for a in (x, indices, weights, valid))
  dt = x.dtype
  g_, t, d = x.shape
  f = wi_gate.shape[-1]
  # Experts side by side: [D, E*F] up, [E*F, D] down, so each projection is one large matmul;
  # the combine weight scales each expert's hidden units before the down projection.
  xf = x.reshape(g_ * t, d)
  up = lambda w: xf @ jnp.swapaxes(w.astype(dt), 0, 1).reshape(d, el * f)
  h = (jax.nn.silu(up(wi_gate)) * up(wi_up)).reshape(g_ * t, el, f)
  local = indices - _expert_offset(el, ep)  # out-of-range ids one-hot to zeros
  combine = jnp.sum(jax.nn.one_hot(local, el, dtype=jnp.float32) * weights[..., None], axis=-2)
  combine = (combine * valid[..., None]).reshape(g_ * t, el, 1)
  hc = (h.astype(jnp.float32) * combine).astype(dt).reshape(g_ * t, el * f)
  y = (hc @ wo.astype(dt).reshape(el * f, d)).astype(jnp.float32).reshape(g_, t, d)
  return _reduce_scatter_batch(y, ep).astype(dt), routed, routed


def capacity_dispatch(x, indices, weights, valid, weights_e, capacity: int,
                      ep: ExpertAxis | None = None):
  """Gather/scatter dispatch with a per-group capacity. With expert parallelism the
  [E, G, C, D] buffer goes to the experts' devices and back by all-to-all (GShard)."""
  wi_gate, wi_up, wo = weights_e
  el = wi_gate.shape[0]
  p = 1 if ep is None else ep.size
  e = el * p
  g_, t, d = x.shape
  k = indices.shape[-1]
  c = capacity
  # Position of each slot in its expert's queue, k-major: every token's first choice is placed
  # before any second choice (a [G, kT, E] int cumsum; no [T, E, C] one-hot tensor).
  idx = jnp.swapaxes(indices, 1, 2).reshape(g_, k * t)                       # [G, kT]
  slot_valid = jnp.broadcast_to(valid[:, None, :], (g_, k, t)).reshape(g_, k * t)
  onehot = jax.nn.one_hot(idx, e, dtype=jnp.int32) * slot_valid[..., None]  # [G, kT, E]
  pos = jnp.sum((jnp.cumsum(onehot, axis=1) - 1) * onehot, axis=-1)         # [G, kT]
  keep = slot_valid & (pos < c)
  # Buffer row of each slot, expert-major ([E, G, C] rows), slots renumbered token-major
  # (slot = token * k + choice) as gmm.to_rows / combine expect; dropped slots point one past
  # the end (a zero row).
  m = e * g_ * c
  row = jnp.where(keep, idx * (g_ * c) + jnp.arange(g_)[:, None] * c + pos, m)
  rows = jnp.swapaxes(row.reshape(g_, k, t), 1, 2).reshape(-1)              # [G*T*k]
  n = rows.shape[0]
  slot_of_row = jnp.full((m + 1,), n, jnp.int32).at[rows].set(jnp.arange(n, dtype=jnp.int32))
  layout = gmm.Layout(rows, slot_of_row[:m], None, None, m, 1)
  xe = gmm.to_rows(x.reshape(g_ * t, d), layout, k)                         # [E*G*C, D]
  if ep is None:
    ye = swiglu_experts(xe.reshape(e, g_ * c, d), wi_gate, wi_up, wo)
  else:
    # [P(dest), El, G*C, D] --all-to-all--> [P(source), El, G*C, D]: my experts, every
    # source's tokens; back the same way.
    xe = lax.all_to_all(xe.reshape(p, el, g_ * c, d), ep.name, 0, 0, tiled=True)
    xe = jnp.swapaxes(xe, 0, 1).reshape(el, p * g_ * c, d)
    ye = swiglu_experts(xe, wi_gate, wi_up, wo)
    ye = jnp.swapaxes(ye.reshape(el, p, g_ * c, d), 0, 1)
    ye = lax.all_to_all(ye, ep.name, 0, 0, tiled=True)
  keep_tk = jnp.swapaxes(keep.reshape(g_, k, t), 1, 2).reshape(g_ * t, k)
  y = gmm.combine(ye.reshape(m, d), layout, jnp.where(keep_tk, weights.reshape(g_ * t, k), 0.0))
  return y.reshape(g_, t, d).astype(x.dtype), jnp.sum(keep), jnp.sum(slot_valid)


def dropless_dispatch(x, indices, weights, valid, weights_e, impl: str,
                      ep: ExpertAxis | None = None):
  """Sort token-slots by expert, grouped SwiGLU, unsort, combine; nothing is dropped. With
  expert parallelism each device sorts the expert-axis batch (all-gather) for its own experts
  and the partial outputs are summed back to their shard (reduce-scatter): static shapes with
  no worst-case all-to-all buffer (XLA:CPU has no ragged all-to-all)."""
  wi_gate, wi_up, wo = weights_e
  el = wi_gate.shape[0]
  k = indices.shape[-1]
  routed = jnp.sum(valid) * k
  x, indices, weights, valid = (_gather_batch(a, ep) for a in (x, indices, weights, valid))
  g_, t, d = x.shape
  n = g_ * t * k
  local = indices - _expert_offset(el, ep)
  ok = (valid[..., None] & (local >= 0) & (local < el)).reshape(n)           # slot = token*k + j
  layout = gmm.sorted_layout(jnp.where(ok, local.reshape(n), -1), el, gmm.align_for(impl),
                             gmm.row_multiple_for(impl), gmm.tail_rows_for(impl))
  xb = gmm.to_rows(x.reshape(g_ * t, d), layout, k)                                # [M, D]
  yb = gmm.grouped_swiglu(xb, layout, wi_gate, wi_up, wo, impl)
  y = gmm.combine(yb, layout, jnp.where(ok, weights.reshape(n), 0.0).reshape(g_ * t, k))
  return _reduce_scatter_batch(y.reshape(g_, t, d), ep).astype(x.dtype), routed, routed


class MoEFeedForward(nnx.Module):
  """Router + E SwiGLU experts (+ an optional shared expert every token uses). Reads each
  token's language to force its own expert."""

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    m = spec.moe
    pd = dtype_of(spec.param_dtype)
    self.spec = spec
    self.router = nnx.Param(
        normal_init(m.router_init_std, ("embed", None))(rngs.params(), (spec.d_model, m.num_experts), jnp.float32))
    init = lambda axes, shape: normal_init(spec.init_std, axes)(rngs.params(), shape, pd)
    self.wi_gate = nnx.Param(init(("expert", "embed", "mlp"), (m.num_experts, spec.d_model, m.d_ff)))
    self.wi_up = nnx.Param(init(("expert", "embed", "mlp"), (m.num_experts, spec.d_model, m.d_ff)))
    self.wo = nnx.Param(init(("expert", "mlp", "embed"), (m.num_experts, m.d_ff, spec.d_model)))
    if m.shared_d_ff:
      # Outside the dispatch: a dense SwiGLU sharded like the dense FFN (embed x mlp), so every
      # backend and mesh runs it the same way.
      self.shared_expert = MLP(spec, d_ff=m.shared_d_ff, rngs=rngs)
      if m.shared_gate:
        self.shared_expert_gate = nnx.Linear(
            spec.d_model, 1, use_bias=False, param_dtype=pd, dtype=dtype_of(spec.dtype),
            kernel_init=normal_init(spec.init_std, ("embed", None)), rngs=rngs)

  def shared_output(self, x):
    """The shared expert's output for x: [B, S, D]: sigmoid(gate(x)) * SwiGLU(x) with the gate
    (HF Qwen2-MoE's order), SwiGLU(x) without."""
    y = self.shared_expert(x)
    if self.spec.moe.shared_gate:
      g = self.shared_expert_gate(as_rows(x)).astype(jnp.float32)
      y = (jax.nn.sigmoid(g).reshape(*x.shape[:-1], 1) * y.astype(jnp.float32)).astype(x.dtype)
    return y

  def __call__(self, x, lang_ids, valid, *, train: bool, rng=None):
    """x: [B, S, D]; lang_ids: [B, S] (-1 = none); valid: [B, S] bool (False = padding).
    Returns (y [B, S, D], aux) where aux holds this layer's losses and statistics."""
    m = self.spec.moe
    b, s, d = x.shape
    xr = routing.jitter_logits_input(x, rng, m.jitter) if train else x
    logits = jnp.einsum("bsd,de->bse", xr.astype(jnp.float32), self.router[...].astype(jnp.float32))
    flat_logits = logits.reshape(b * s, m.num_experts)
    flat_lang = lang_ids.reshape(-1)
    flat_valid = valid.reshape(-1)
    forced = None
    if m.lang_to_expert:
      table = jnp.asarray(m.lang_to_expert, jnp.int32)
      forced = jnp.where(flat_lang >= 0, table[jnp.maximum(flat_lang, 0)], -1)
    r = routing.route(flat_logits, top_k=m.top_k, norm_topk=m.norm_topk,
                      mode=m.language_routing, forced=forced, train=train)
    k = r.indices.shape[-1]
    indices = r.indices.reshape(b, s, k)
    weights = r.weights.reshape(b, s, k)
    experts = (self.wi_gate[...], self.wi_up[...], self.wo[...])
    dispatch_fn, check_vma = make_dispatch(m, s, k, train)
    y, dropped = expert_parallel.dispatch(dispatch_fn, x, indices, weights, valid, experts,
                                          check_vma=check_vma)
    if m.shared_d_ff:
      y = y + self.shared_output(x)

    aux = {
        "lb_loss": routing.load_balance_loss(r.probs, r.indices, flat_valid),
        "z_loss": routing.z_loss(flat_logits, flat_valid),
        "dropped_fraction": dropped,
    }
    if m.lang_is_original:
      orig = jnp.asarray(m.lang_is_original, jnp.float32)
      is_orig = jnp.where(flat_lang >= 0, orig[jnp.maximum(flat_lang, 0)], 0.0) * flat_valid
      aux["lpr_loss"] = routing.lpr_loss(flat_logits, is_orig)
      # MoE-LPR's convergence signal: p_router(expert 0) summed over original-language tokens
      # (token-weighted over a log window: sum / count).
      aux["expert0_prob_sum"] = jnp.sum(r.probs[:, 0] * is_orig)
      aux["original_tokens"] = jnp.sum(is_orig)
    num_langs = len(m.lang_to_expert)
    aux.update(routing.router_stats(r.probs, r.indices, flat_valid, forced, num_langs, flat_lang))
    return y, aux

  def route_tokens(self, x, lang_ids) -> routing.Routing:
    """The inference routing decisions of `__call__` (train=False: no jitter, no hybrid forcing;
    hard routing still follows the language) for x: [B, S, D], lang_ids: [B, S]. Returns
    Routing with indices/weights [B*S, k] and probs [B*S, E]. For routing analysis; training
    never calls it."""
    m = self.spec.moe
    logits = jnp.einsum("bsd,de->bse", x.astype(jnp.float32), self.router[...].astype(jnp.float32))
    flat_lang = lang_ids.reshape(-1)
    forced = None
    if m.lang_to_expert:
      table = jnp.asarray(m.lang_to_expert, jnp.int32)
      forced = jnp.where(flat_lang >= 0, table[jnp.maximum(flat_lang, 0)], -1)
    return routing.route(logits.reshape(-1, m.num_experts), top_k=m.top_k, norm_topk=m.norm_topk,
                         mode=m.language_routing, forced=forced, train=False)


def make_dispatch(m, seq_len: int, k: int, train: bool):
  """The dispatch function of MoESpec `m`, f(x, indices, weights, valid, experts, ep), and
  whether shard_map may check its varying-axes types: megablox's pallas_call declares none
  (jax's kernel builds its output type without them), so under expert parallelism it runs
  unchecked."""
  backend = resolve_backend(m.backend, None, m.grouped_matmul)
  if backend == "dense":
    return dense_dispatch, True
  if backend == "capacity":
    cf = m.capacity_factor_train if train else m.capacity_factor_eval
    cap = capacity_per_group(seq_len, k, m.num_experts, cf)
    return (lambda *a, ep=None: capacity_dispatch(*a, cap, ep=ep)), True
  impl = resolve_grouped_matmul(m.grouped_matmul)
  return (lambda *a, ep=None: dropless_dispatch(*a, impl, ep=ep)), impl != "megablox"
