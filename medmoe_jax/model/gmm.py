"""Grouped SwiGLU for dropless MoE: rows sorted by expert, each group through its own expert.

`sorted_layout` sorts token-slots by expert into a row buffer where group e occupies rows
[starts[e], starts[e] + sizes[e]) (sizes rounded up to `align`; the rounding rows are zero).
`grouped_swiglu` runs down(silu(x Wg_e) * (x Wu_e)) on every group with one of:

  ragged_dot  `jax.lax.ragged_dot` (portable). XLA on CPU lowers it to a dense matmul per group
              over ALL rows, masked, so its cost grows linearly with the expert count.
  megablox    the Pallas TPU grouped matmul (jax.experimental.pallas.ops.tpu.megablox), with its
              own custom VJP (gmm / tgmm). Off TPU it only runs in Pallas interpret mode (tests).
  chunked     for CPU: each group is cut into power-of-two row chunks (CHUNK_SIZES, 512 down to
              8: chunks of 512, then at most two for the rest), and each chunk is one ordinary
              matmul inside a `lax.while_loop` whose trip count is the number of chunks the
              group actually has. Work is about sum_e n_e rows, independent of the expert
              count, and each matmul is as large as the group allows. Loops are not
              differentiable, so the VJP is written out (same chunks, backwards).
  tokamax     `tokamax.ragged_dot` (the optional `gpu` extra): Mosaic-GPU grouped GEMMs on
              H100/B200, a Triton kernel on other NVIDIA GPUs, Mosaic on TPU; elsewhere (CPU,
              tests) its XLA implementation, which is `lax.ragged_dot`. Its VJP is tokamax's own
              (grouped matmuls for the input and the weight gradients). XLA's own ragged_dot on
              GPU pads every group to the full row count and runs one dense cuBLAS call: about
              as costly as every expert on every token.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from medmoe_jax.model.spec import GROUPED_MATMUL_KERNELS as IMPLS
CHUNK_SIZES = (512, 256, 128, 64, 32, 16, 8)  # powers of two: binary decomposition of a group
OVERSHOOT_ROWS = 128  # a group's last chunk may run this far past its end (see _chunk_plan)


def megablox_available() -> bool:
  try:
    from jax.experimental.pallas.ops.tpu.megablox import ops  # noqa: F401
  except Exception:  # pragma: no cover - depends on the jax build
    return False
  return True


def tokamax_available() -> bool:
  try:
    import tokamax  # noqa: F401
  except Exception:  # not installed (the optional `gpu` extra), or built for another jax
    return False
  return True


def default_impl(platform: str) -> str:
  """What `auto` means per platform (see BENCHMARKS.md): CPU -> chunked (measured fastest);
  TPU -> megablox (the purpose-built kernel); GPU -> tokamax (a real grouped GEMM) when it is
  installed. Without it a GPU gets chunked: XLA's ragged_dot there is a zero-padded dense
  matmul over every group (moe.resolve_backend then runs `auto` as the dense backend instead,
  see there)."""
  if platform == "cpu":
    return "chunked"
  if platform == "tpu" and megablox_available():
    return "megablox"
  if platform == "gpu":
    return "tokamax" if tokamax_available() else "chunked"
  return "ragged_dot"


def align_for(impl: str) -> int:
  """Group alignment each implementation needs (chunked: its smallest chunk)."""
  return CHUNK_SIZES[-1] if impl == "chunked" else 1


def row_multiple_for(impl: str) -> int:
  """Buffer rows must be a multiple of megablox's row tile."""
  return 128 if impl == "megablox" else 1


def tail_rows_for(impl: str) -> int:
  """Spare zero rows after the last group: room for a chunk to run past its group's end."""
  return OVERSHOOT_ROWS if impl == "chunked" else 0


class Layout(NamedTuple):
  rows: jax.Array         # [N] buffer row of each slot; num_rows (one past the end) if unrouted
  slot_of_row: jax.Array  # [M] slot held by each buffer row; N if the row is empty
  starts: jax.Array       # [E] first row of each group (int32)
  sizes: jax.Array        # [E] rows of each group, rounded up to the alignment (int32)
  num_rows: int           # M, static
  align: int              # group sizes are multiples of this


def _round_up(x, m):
  return (x + m - 1) // m * m


def sorted_layout(expert, num_experts: int, align: int = 1, row_multiple: int = 1,
                  tail: int = 0) -> Layout:
  """expert: [N] int32 group of each slot; values outside [0, num_experts) are not routed.

  Stable sort by expert, so a group's rows keep slot order. The buffer size is the static bound
  N + E*(align-1) + tail (rounded up to row_multiple); sort cost is O(N log N), not O(N E)."""
  n = expert.shape[0]
  e = num_experts
  routed = (expert >= 0) & (expert < e)
  key = jnp.where(routed, expert, e).astype(jnp.int32)
  counts = jnp.zeros((e + 1,), jnp.int32).at[key].add(1)
  sizes = _round_up(counts[:e], align)
  starts = jnp.cumsum(sizes) - sizes
  num_rows = _round_up(n + e * (align - 1) + tail, max(align, row_multiple))
  order = jnp.argsort(key, stable=True)                      # sorted position -> slot
  skey = key[order]
  first = jnp.cumsum(counts) - counts                        # first sorted position per key
  rank = jnp.arange(n, dtype=jnp.int32) - first[skey]
  starts_ext = jnp.concatenate([starts, jnp.asarray([num_rows], jnp.int32)])
  row_sorted = jnp.where(skey < e, starts_ext[skey] + rank, num_rows)
  rows = jnp.zeros((n,), jnp.int32).at[order].set(row_sorted.astype(jnp.int32))
  slot_of_row = jnp.full((num_rows + 1,), n, jnp.int32).at[rows].set(
      jnp.arange(n, dtype=jnp.int32))[:num_rows]
  return Layout(rows, slot_of_row, starts.astype(jnp.int32), sizes.astype(jnp.int32), num_rows,
                align)


def to_rows(x, layout: Layout, k: int):
  """Token -> buffer rows. x: [T, D] with slot = token * k + choice -> [M, D] (empty rows 0)."""
  return _to_rows(x, layout.slot_of_row, layout.rows, k)


def combine(yb, layout: Layout, weights):
  """Buffer rows -> tokens, weighted: y[t] = sum_j weights[t, j] * yb[row of slot t*k + j].
  yb: [M, D]; weights: [T, k] (0 where a slot is unrouted or dropped) -> [T, D] float32."""
  return _combine(yb, weights.astype(jnp.float32), layout.rows, layout.slot_of_row)


# Both moves are gathers, and so are their transposes: a token's k rows are known (`rows`), and
# a row holds at most one slot (`slot_of_row`). Autodiff would transpose a gather into a
# scatter-add, several times slower on CPU than the gather. The combine's backward gathers the
# output gradient straight into row order, scaled by each row's weight, without an [N, D]
# per-slot intermediate.


def _append_zero_row(a):
  return jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _to_rows(x, slot_of_row, rows, k):
  n, t = rows.shape[0], x.shape[0]
  token = jnp.where(slot_of_row < n, slot_of_row // k, t)
  return _append_zero_row(x)[token]


def _to_rows_fwd(x, slot_of_row, rows, k):
  return _to_rows(x, slot_of_row, rows, k), (x, rows)


def _to_rows_bwd(k, res, dxb):
  x, rows = res
  dx = _append_zero_row(dxb)[rows].reshape(x.shape[0], k, -1).sum(axis=1)
  return _sum_to_type_of(dx.astype(x.dtype), x), None, None


_to_rows.defvjp(_to_rows_fwd, _to_rows_bwd)


@jax.custom_vjp
def _combine(yb, w, rows, slot_of_row):
  t, k = w.shape
  y_slot = _append_zero_row(yb)[rows].reshape(t, k, -1).astype(jnp.float32)
  return jnp.sum(y_slot * w[..., None], axis=1)  # elementwise, so the gather fuses into it


def _combine_fwd(yb, w, rows, slot_of_row):
  return _combine(yb, w, rows, slot_of_row), (yb, w, rows, slot_of_row)


def _combine_bwd(res, dy):
  yb, w, rows, slot_of_row = res
  t, k = w.shape
  n = rows.shape[0]
  filled = slot_of_row < n
  token = jnp.where(filled, slot_of_row // k, t)                      # t: the appended zero row
  w_row = _append_zero_row(w.reshape(n))[slot_of_row]                   # 0 for empty rows
  dyb = (_append_zero_row(dy)[token] * w_row[:, None]).astype(yb.dtype)
  y_slot = _append_zero_row(yb)[rows].reshape(t, k, -1).astype(jnp.float32)
  dw = jnp.einsum("tkd,td->tk", y_slot, dy)  # as a multiply-reduce XLA:CPU took 4x longer
  return _sum_to_type_of(dyb, yb), _sum_to_type_of(dw, w), None, None


_combine.defvjp(_combine_fwd, _combine_bwd)


def grouped_swiglu(xb, layout: Layout, wi_gate, wi_up, wo, impl: str):
  """xb: [M, D] rows in `layout` order (rows outside groups are zero) -> [M, D]; rows outside
  every group come back zero. Weights: [E, D, F], [E, D, F], [E, F, D]."""
  dt = xb.dtype
  wg, wu, wd = wi_gate.astype(dt), wi_up.astype(dt), wo.astype(dt)
  if impl == "chunked":
    if layout.align % CHUNK_SIZES[-1]:
      raise ValueError(f"chunked grouped matmul needs groups aligned to {CHUNK_SIZES[-1]} rows, "
                       f"got align={layout.align}; build the layout with align_for('chunked')")
    return chunked_swiglu(xb, wg, wu, wd, layout.starts, layout.sizes)
  if impl == "ragged_dot":
    gs = layout.sizes
    g = lax.ragged_dot(xb, wg, gs)
    u = lax.ragged_dot(xb, wu, gs)
    return lax.ragged_dot(jax.nn.silu(g) * u, wd, gs).astype(dt)
  if impl == "megablox":
    return _megablox_swiglu(xb, wg, wu, wd, layout.sizes)
  if impl == "tokamax":
    return _tokamax_swiglu(xb, wg, wu, wd, layout.sizes)
  raise ValueError(f"grouped matmul {impl!r}; choose one of {IMPLS}")


def _megablox_swiglu(xb, wg, wu, wd, sizes):
  from jax.experimental.pallas.ops.tpu.megablox import ops
  m, d = xb.shape
  f = wg.shape[-1]
  interpret = jax.default_backend() != "tpu"  # off TPU: Pallas interpreter (tests only)

  def tile(n):
    return next((t for t in (512, 256, 128) if n % t == 0), n)

  # Rows past the last group are not written by the kernel; zero them so nothing downstream
  # (including the backward pass) ever reads uninitialised memory.
  inside = (jnp.arange(m) < jnp.sum(sizes))[:, None]
  tm = 128 if m % 128 == 0 else m

  def gmm(lhs, rhs, tiling):
    # Positional: ops.gmm is a custom_vjp with non-differentiable arguments 3, 4, 7, 8.
    return ops.gmm(lhs, rhs, sizes, xb.dtype, tiling, None, None, False, interpret)

  g = jnp.where(inside, gmm(xb, wg, (tm, tile(d), tile(f))), 0)
  u = jnp.where(inside, gmm(xb, wu, (tm, tile(d), tile(f))), 0)
  h = jax.nn.silu(g) * u
  return jnp.where(inside, gmm(h, wd, (tm, tile(f), tile(d))), 0)


def _tokamax_swiglu(xb, wg, wu, wd, sizes):
  import tokamax
  from absl import flags
  if not flags.FLAGS.is_parsed():
    # tokamax reads its settings from absl flags and, when nothing has parsed them, parses
    # sys.argv itself, which fails on any other program's arguments (pytest's, argparse's).
    # `python -m medmoe_jax.train` parses them; elsewhere tokamax gets its defaults.
    flags.FLAGS.mark_as_parsed()
  # Rows past the last group are not the kernels' concern (the GPU kernels leave them as they
  # are): zero them, as megablox's are, so nothing downstream reads undefined values.
  inside = (jnp.arange(xb.shape[0]) < jnp.sum(sizes))[:, None]
  # implementation=None: tokamax's best for the platform (Mosaic GPU, Triton, then XLA).
  dot = lambda a, w: tokamax.ragged_dot(a, w, sizes)
  h = jnp.where(inside, jax.nn.silu(dot(xb, wg)) * dot(xb, wu), 0)
  return jnp.where(inside, dot(h, wd), 0).astype(xb.dtype)


# ----------------------------------------------------------------------------------------------
# chunked: the CPU grouped matmul.
#
# A scan over experts; for expert e, a few while loops (one per chunk size, trip count = how many
# chunks of that size its group needs) each run plain matmuls on row chunks. The expert's weights
# are sliced once per expert (gate and up side by side, so each chunk does one [s, D] x [D, 2F]
# matmul instead of two, and one for their weight gradient), its weight gradients accumulate in loop carries that stay in cache and
# leave the scan as its stacked outputs: no scattered accumulation into an [E, D, F] buffer.
# The backward pass recomputes the gate/up activations per chunk instead of keeping two
# [rows, F] buffers: on CPU, allocating and filling those costs more than the extra matmul.
#
# Fewer ops matter more than exact row counts: every op in the loops has a fixed cost (loop
# bookkeeping, thread-pool hand-off), and with 64 experts the exact binary decomposition issued
# 4x more matmuls than with 8 for the same FLOPs (BENCHMARKS.md "MoE layer"). So a group of n
# rows is covered by n // 512 chunks of 512, then at most two chunks for the remainder r:
#   - one chunk of r rounded up to a power of two p, if r > 3p / 4 and the buffer has room: it
#     runs past the group's end (by less than p / 4) into the next group's rows (or the spare
#     tail rows), and what it writes there is garbage that the next expert, later in the scan,
#     overwrites; its weight gradients skip those rows. Above 3p / 4 the split below would
#     compute p rows too (p / 2, then r - p / 2 > p / 4 rounded up to p / 2), in two matmuls of
#     half the size, each less efficient per row: a 200-row group is one chunk of 256, not two
#     of 128 (docs/history.md, benchmark history, "2026-12-06 (first round)").
#   - otherwise the largest power of two h <= r, then r - h rounded up to a power of two. That
#     last chunk is moved back to end at the group's end, so it overlaps rows the chunk before it
#     already did (fewer than r / 2): computed twice, bit for bit the same, in the forward pass
#     and for the input gradient; the weight gradients skip them.


def _chunk_plan(starts, sizes, num_rows: int):
  """The chunks of every group (see above), as (chunk sizes, largest first; table [E, 3 x sizes]
  int32: per expert and size, the first row, the number of chunks of that size, and 1 if the
  last of them is moved back to end at the group's end). Computed once for all experts, so the
  per-expert loop body does no index arithmetic of its own."""
  usable = [s for s in CHUNK_SIZES if s <= num_rows] or [CHUNK_SIZES[-1]]
  big, small = usable[0], usable[1:]
  full = sizes // big
  rest = sizes - full * big
  rest_start = starts + full * big
  whole = jnp.zeros_like(sizes)                  # one chunk for the rest, running past the end
  for s in reversed(usable):
    fits = (rest > 0) & (rest <= s) & (4 * rest > 3 * s) & (rest_start + s <= num_rows)
    whole = jnp.where((whole == 0) & fits, s, whole)
  split = (rest > 0) & (whole == 0)
  first = jnp.zeros_like(sizes)                  # largest power of two <= rest
  for s in small:
    first = jnp.where(split & (first == 0) & (rest >= s), s, first)
  second = jnp.zeros_like(sizes)                 # smallest power of two >= what is left
  for s in reversed(small):
    second = jnp.where(split & (second == 0) & (rest > first) & (rest - first <= s), s, second)
  one = lambda c: c.astype(sizes.dtype)
  zero = jnp.zeros_like(sizes)
  columns, row = [starts, full + one(whole == big), zero], rest_start + one(whole == big) * big
  for s in small:
    count = one(first == s) + one(second == s) + one(whole == s)
    columns += [row, count, one(second == s)]
    row = row + count * s
  return tuple(usable), jnp.stack(columns, axis=1).astype(jnp.int32)


def _over_chunks(chunk_sizes, info, end, carry, body_for):
  """Run body(carry, row, new, end) over every chunk of one expert (info: its row of the plan
  table; end: one past its group's last row): the chunk is rows [row, row + s), of which those
  in [new, end) are its group's and not in an earlier chunk."""
  for i, s in enumerate(chunk_sizes):
    base, count, moved, body = info[3 * i], info[3 * i + 1], info[3 * i + 2], body_for(s)

    def step(j, c, base=base, count=count, moved=moved, body=body, s=s):
      new = base + j * s
      last_moved = (moved == 1) & (j == count - 1)
      return body(c, jnp.where(last_moved, end - s, new), new, end)

    carry = lax.fori_loop(0, count, step, carry)
  return carry


def _rows(row, s):
  """[s, 1] buffer row index of each row of the chunk starting at `row`."""
  return row + lax.broadcasted_iota(jnp.int32, (s, 1), 0)


def _chunked_forward(x, wg, wu, wd, starts, sizes):
  f = wg.shape[-1]
  chunk_sizes, table = _chunk_plan(starts, sizes, x.shape[0])

  def per_expert(y, e_info):
    e, info = e_info
    gu_e, d_e = jnp.concatenate([wg[e], wu[e]], axis=1), wd[e]   # [D, 2F], [F, D]

    def body_for(s):
      def body(y, row, new, end):  # overlap rows: the same values again
        gu = lax.dynamic_slice_in_dim(x, row, s) @ gu_e
        yb = (jax.nn.silu(gu[:, :f]) * gu[:, f:]) @ d_e
        yb = jnp.where(_rows(row, s) < end, yb, 0)  # past the end: zero (or the next group's)
        return lax.dynamic_update_slice_in_dim(y, yb.astype(y.dtype), row, 0)
      return body

    return _over_chunks(chunk_sizes, info, starts[e] + sizes[e], y, body_for), None

  y0 = _varying_like(jnp.zeros(x.shape, x.dtype), x, wg, wu, wd, starts, sizes)
  return lax.scan(per_expert, y0, (jnp.arange(wg.shape[0]), table))[0]


@jax.custom_vjp
def chunked_swiglu(x, wg, wu, wd, starts, sizes):
  """x: [M, D] sorted rows, zero outside the groups; wg, wu: [E, D, F]; wd: [E, F, D]; starts,
  sizes: [E] int32, groups in increasing row order inside [0, M), sizes multiples of 8 (spare
  zero rows after the last group, `tail_rows_for("chunked")`, let more groups take one chunk).
  Returns [M, D], zero outside the groups."""
  return _chunked_forward(x, wg, wu, wd, starts, sizes)


def _chunked_vjp_fwd(x, wg, wu, wd, starts, sizes):
  return _chunked_forward(x, wg, wu, wd, starts, sizes), (x, wg, wu, wd, starts, sizes)


def _chunked_vjp_bwd(res, dy):
  x, wg, wu, wd, starts, sizes = res
  f = wg.shape[-1]
  chunk_sizes, table = _chunk_plan(starts, sizes, x.shape[0])
  dy = dy.astype(x.dtype)
  acc = jnp.float32  # weight gradients accumulate over chunks: keep them in float32
  refs = (x, wg, wu, wd, starts, sizes, dy)

  def per_expert(carry, e_info):
    dx, dwg, dwu, dwd = carry
    e, info = e_info
    gu_e, d_e = jnp.concatenate([wg[e], wu[e]], axis=1), wd[e]   # [D, 2F], [F, D]

    def body_for(s):
      def body(carry, row, new, end):
        dx, dgu_e, dd_e = carry
        xb = lax.dynamic_slice_in_dim(x, row, s)
        dyb = lax.dynamic_slice_in_dim(dy, row, s)
        i = _rows(row, s)
        fresh = (i >= new) & (i < end)  # this group's, and not done before
        gu = xb @ gu_e
        g, u = gu[:, :f], gu[:, f:]
        sig = jax.nn.sigmoid(g)
        silu = g * sig
        dh = dyb @ d_e.T
        dg, du = dh * u * (sig * (1 + g * (1 - sig))), dh * silu
        dgu = jnp.concatenate([dg, du], axis=1)
        dxb = dgu @ gu_e.T
        dxb = jnp.where(i < end, dxb, 0)
        return (lax.dynamic_update_slice_in_dim(dx, dxb.astype(dx.dtype), row, 0),
                dgu_e + (jnp.where(fresh, xb, 0).T @ dgu).astype(acc),
                dd_e + ((silu * u).T @ jnp.where(fresh, dyb, 0)).astype(acc))
      return body

    zeros = _varying_like((jnp.zeros(gu_e.shape, acc), jnp.zeros(d_e.shape, acc)), *refs)
    dx, dgu_e, dd_e = _over_chunks(chunk_sizes, info, starts[e] + sizes[e], (dx,) + zeros,
                                   body_for)
    # Split per expert, while it is in cache: slicing the stacked [E, D, 2F] costs a full pass.
    put = lambda stack, g: lax.dynamic_update_index_in_dim(stack, g.astype(stack.dtype), e, 0)
    return (dx, put(dwg, dgu_e[:, :f]), put(dwu, dgu_e[:, f:]), put(dwd, dd_e)), None

  # Every buffer a loop writes starts from its own constant, so that XLA does not merge two
  # equal initial buffers into one and then copy it into each loop's carry (a full extra pass,
  # 16 MB per weight at 64 experts). dx: -0.0, unlike the forward pass's 0.0. The stacked weight
  # gradients are carries rather than scan outputs (scan starts every output from the same 0.0):
  # every expert's slice is overwritten, so their initial values are never read. Gate and up
  # have one shape, so they need the two zeros; the down projection's stack differs in shape
  # (unless d_ff == d_model, where XLA may copy once more: slower, still correct).
  dx0 = jnp.full(x.shape, -0.0, x.dtype)
  stacks = tuple(jnp.full(w.shape, v, w.dtype) for w, v in ((wg, 0.0), (wu, -0.0), (wd, 0.0)))
  init = _varying_like((dx0,) + stacks, *refs)
  (dx, dwg, dwu, dwd), _ = lax.scan(per_expert, init, (jnp.arange(wg.shape[0]), table))
  grads = (dx, dwg, dwu, dwd)
  return tuple(_sum_to_type_of(g, p) for g, p in zip(grads, (x, wg, wu, wd))) + (None, None)


chunked_swiglu.defvjp(_chunked_vjp_fwd, _chunked_vjp_bwd)


def _varying_like(tree, *refs):
  """Mark a loop's initial carry as varying over the mesh axes its inputs vary over (inside
  shard_map the carry type must not change across iterations); a no-op outside shard_map."""
  axes = set().union(*(_vma(r) for r in refs))

  def cast(a):
    missing = tuple(sorted(axes - _vma(a)))
    return lax.pcast(a, missing, to="varying") if missing else a

  return jax.tree.map(cast, tree)


def _sum_to_type_of(ct, primal):
  """A cotangent must vary over exactly the mesh axes its primal varies over: sum the
  contributions of the other axes (what shard_map's own autodiff does for replicated inputs)."""
  extra = tuple(sorted(_vma(ct) - _vma(primal)))
  return lax.psum(ct, extra) if extra else ct


def _vma(a) -> set:
  t = jax.typeof(a)
  mat = getattr(t, "manual_axis_type", None)
  return set(getattr(mat, "varying", None) or getattr(t, "vma", None) or ())
