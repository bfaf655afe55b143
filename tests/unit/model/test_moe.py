"""MoE dispatch: layouts and kernels by value, every backend equal to the dense reference when
nothing is dropped, capacity drops by value, and every mesh equal to one device (outputs, losses,
gradients) for each backend, with and without hybrid-k forcing."""
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medmoe_jax import config as cfg_lib
from medmoe_jax import sharding
from medmoe_jax.model import gmm, moe
from medmoe_jax.model.moe import MoEFeedForward
from medmoe_jax.model.spec import ModelSpec, MoESpec

D, F, E, B, S = 32, 48, 8, 8, 16
# These tests compare values, not speed: skip LLVM's optimisation passes (a third of compile time).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(f, **kw):
  return jax.jit(f, compiler_options=FAST_COMPILE, **kw)


def _ffn(x, wg, wu, wo):
  return (jax.nn.silu(x @ wg) * (x @ wu)) @ wo


# ---------------------------------------------------------------------------- layout, kernels


def test_sorted_layout_values():
  # slots -> experts; -1 and 3 (== num_experts) are not routed.
  expert = jnp.asarray([2, 0, 2, -1, 0, 2, 3], jnp.int32)
  layout = _jit(gmm.sorted_layout, static_argnums=(1, 2))
  lay = layout(expert, 3, 1)
  np.testing.assert_array_equal(lay.sizes, [2, 0, 3])
  np.testing.assert_array_equal(lay.starts, [0, 2, 2])
  assert lay.num_rows == 7
  # Stable: expert 0 keeps slot order (1, 4), expert 2 too (0, 2, 5); unrouted -> row 7 (none).
  np.testing.assert_array_equal(lay.rows, [2, 0, 3, 7, 1, 4, 7])
  np.testing.assert_array_equal(lay.slot_of_row, [1, 4, 0, 2, 5, 7, 7])
  # Aligned to 8: each group is rounded up; the buffer bound is N + E*(align-1).
  lay8 = layout(expert, 3, 8)
  np.testing.assert_array_equal(lay8.sizes, [8, 0, 8])
  np.testing.assert_array_equal(lay8.starts, [0, 8, 8])
  assert lay8.num_rows == 7 + 3 * 7 + 4  # rounded up to a multiple of 8
  np.testing.assert_array_equal(lay8.rows, [8, 0, 9, 32, 1, 10, 32])


def _grouped_case(sizes, d=8, f=16, seed=0):
  """Rows sorted by group, aligned to 8, zero rows between groups; a per-row reference."""
  r = np.random.RandomState(seed)
  e = len(sizes)
  padded = [(n + 7) // 8 * 8 for n in sizes]
  starts = np.concatenate([[0], np.cumsum(padded)[:-1]]).astype(np.int32)
  m = int(sum(padded)) + 8
  x = np.zeros((m, d), np.float32)
  group = np.full(m, -1)
  for i, n in enumerate(sizes):
    x[starts[i]:starts[i] + n] = r.randn(n, d)
    group[starts[i]:starts[i] + n] = i
  w = [jnp.asarray(r.randn(*s) * 0.3, jnp.float32) for s in ((e, d, f), (e, d, f), (e, f, d))]
  layout = gmm.Layout(None, None, jnp.asarray(starts), jnp.asarray(padded, jnp.int32), m, 8)
  ct = jnp.asarray(r.randn(m, d), jnp.float32)

  def reference(x, wg, wu, wo):
    ys = jnp.stack([_ffn(x, wg[i], wu[i], wo[i]) for i in range(e)])        # [E, M, D]
    return jnp.einsum("emd,me->md", ys, jax.nn.one_hot(group, e))
  return jnp.asarray(x), w, layout, ct, reference


@pytest.mark.parametrize("impl", ["chunked", "ragged_dot", "tokamax"])
def test_grouped_swiglu_matches_per_row_reference(impl):
  # Group sizes reach every chunk size, an empty group, tiny ones; 744 = 512 + one chunk of 256
  # that runs 24 rows into the next group (which its own expert then overwrites); 200 is one
  # chunk of 256 that runs through the whole next group (24) into the one after.
  x, w, layout, ct, reference = _grouped_case([3, 0, 744, 40, 17, 200, 24, 33])

  def losses(x, *w):
    return (jnp.sum(gmm.grouped_swiglu(x, layout, *w, impl) * ct), jnp.sum(reference(x, *w) * ct))

  @_jit
  def run(x, *w):
    grads = [jax.grad(lambda *a, i=i: losses(*a)[i], argnums=(0, 1, 2, 3))(x, *w) for i in (0, 1)]
    return gmm.grouped_swiglu(x, layout, *w, impl), reference(x, *w), grads

  y, y_ref, (got, want) = run(x, *w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(y[-8:]))) == 0.0   # rows outside every group stay zero
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_chunk_plan_covers_each_group_with_few_chunks():
  r = np.random.RandomState(0)
  sizes = np.concatenate([[0, 8, 512, 520, 1016, 248, 264, 24, 480, 120, 200, 192],
                          r.randint(0, 200, 40) * 8, [248]])
  starts = np.cumsum(sizes) - sizes
  num_rows = int(sizes.sum())  # the last group (248) has no room to run past its end
  chunk_sizes, table = gmm._chunk_plan(jnp.asarray(starts, jnp.int32),
                                       jnp.asarray(sizes, jnp.int32), num_rows)
  table = np.asarray(table)
  past_end = 0
  for e, (start, n) in enumerate(zip(starts, sizes)):
    end, rest = start + n, int(n % 512)
    chunks, fresh = [], 0
    for i, s in enumerate(chunk_sizes):
      base, count, moved = table[e, 3 * i:3 * i + 3]
      for j in range(count):
        new = base + j * s
        row = end - s if moved and j == count - 1 else new
        chunks.append((int(row), s))
        fresh += len(range(max(row, new), min(row + s, end)))  # rows the weight gradients use
    assert all(start <= row and row + s <= num_rows for row, s in chunks), (n, chunks)
    over = max(row + s for row, s in chunks) - end if chunks else 0
    assert 3 * over < max(rest, 1), (n, chunks)      # past the end: under a third of the rest
    if over:  # only where splitting the rest would compute as many rows, in more matmuls
      first = 1 << (rest.bit_length() - 1)
      assert first + (1 << (rest - first - 1).bit_length()) == rest + over, (n, chunks)
    past_end += over > 0
    covered = set().union(*(range(row, row + s) for row, s in chunks)) if chunks else set()
    assert covered >= set(range(start, end)), (n, chunks)
    assert fresh == n                                 # weight gradients count each row once
    assert len(chunks) <= n // 512 + 2
    assert sum(s for _, s in chunks) - n < max(rest, 8) / 2 + 8   # overlap < half the rest
    if n in (248, 480, 200):  # one rounded-up chunk for the rest, where there is room for it
      assert len(chunks) == (1 if e < len(sizes) - 1 else 2), (e, n, chunks)
    if n in (192, 264):  # 128 + 64, 256 + 8: rounding up would compute more rows
      assert len(chunks) == 2 and over == 0, (n, chunks)
  assert past_end > 0


def test_chunked_needs_aligned_groups():
  x, w, layout, _, _ = _grouped_case([3, 5])
  with pytest.raises(ValueError, match="align"):
    gmm.grouped_swiglu(x, layout._replace(align=1), *w, "chunked")


def test_megablox_matches_ragged_dot():
  """Off TPU megablox runs in the Pallas interpreter (seconds at this size)."""
  r = np.random.RandomState(0)
  x = jnp.asarray(r.randn(256, 128), jnp.float32)
  w = [jnp.asarray(r.randn(3, 128, 128) * 0.1, jnp.float32) for _ in range(3)]
  layout = gmm.Layout(None, None, jnp.asarray([0, 100, 100], jnp.int32),
                      jnp.asarray([100, 0, 156], jnp.int32), 256, 1)

  def loss(impl):
    return lambda x, *w: jnp.sum(jnp.sin(gmm.grouped_swiglu(x, layout, *w, impl)))

  for g, r_ in zip(jax.grad(loss("megablox"), argnums=(0, 1, 2, 3))(x, *w),
                   jax.grad(loss("ragged_dot"), argnums=(0, 1, 2, 3))(x, *w)):
    tol = 2e-2 if jax.default_backend() == "tpu" else 1e-4  # TPU matmuls: bf16 passes
    np.testing.assert_allclose(g, r_, rtol=tol, atol=tol)


def test_auto_choices():
  assert moe.resolve_backend("auto") == "dropless"
  assert moe.resolve_grouped_matmul("auto", "cpu") == "chunked"
  assert gmm.tokamax_available() or sys.version_info < (3, 11)  # the test extra installs it
  assert moe.resolve_grouped_matmul("auto", "gpu") == "tokamax"
  assert moe.resolve_backend("auto", "gpu") == "dropless"
  assert moe.resolve_grouped_matmul("auto", "tpu") in ("megablox", "ragged_dot")
  with pytest.raises(ValueError, match="config.moe.backend"):
    moe.resolve_backend("sparse")


def test_gpu_without_tokamax_never_runs_padded_ragged_dot(monkeypatch):
  """XLA's ragged_dot on GPU pads every group to all rows: without tokamax, `auto` runs the
  dense backend there (same outputs, one large matmul) and says so; an explicit dropless
  backend gets the chunked kernel, with its note."""
  monkeypatch.setattr(gmm, "tokamax_available", lambda: False)
  assert moe.resolve_backend("auto", "gpu") == "dense"
  assert moe.resolve_backend("auto", "cpu") == "dropless"
  assert moe.resolve_backend("dropless", "gpu") == "dropless"
  assert moe.resolve_grouped_matmul("auto", "gpu") == "chunked"
  assert "runs the dense backend" in moe.kernel_note(MoESpec(), "gpu")
  assert "loop of small matmuls" in moe.kernel_note(MoESpec(backend="dropless"), "gpu")
  assert "not installed" in moe.kernel_note(MoESpec(grouped_matmul="tokamax"), "cpu")
  assert "grows with the expert count" in moe.kernel_note(MoESpec(grouped_matmul="ragged_dot"),
                                                          "gpu")


def test_kernel_note_names_a_kernel_run_off_its_platform():
  assert "Pallas interpreter" in moe.kernel_note(MoESpec(grouped_matmul="megablox"), "cpu")
  assert "'tokamax'" in moe.kernel_note(MoESpec(grouped_matmul="megablox"), "gpu")
  assert "loop of small matmuls" in moe.kernel_note(MoESpec(grouped_matmul="chunked"), "gpu")
  for platform in ("cpu", "gpu", "tpu"):  # auto, or a kernel on its own platform: no note
    assert moe.kernel_note(MoESpec(), platform) is None
  assert moe.kernel_note(MoESpec(grouped_matmul="chunked"), "cpu") is None
  assert "grows with the expert count" in moe.kernel_note(MoESpec(grouped_matmul="ragged_dot"), "cpu")
  assert moe.kernel_note(MoESpec(backend="capacity", grouped_matmul="megablox"), "cpu") is None


def test_capacity_drops_by_value():
  """G=1, T=4, k=1, E=2, C=1: tokens 0 and 2 keep their slot, 1 and 3 overflow expert 0."""
  r = np.random.RandomState(0)
  x = jnp.asarray(r.randn(1, 4, D), jnp.float32)
  w = [jnp.asarray(r.randn(*s) * 0.3, jnp.float32) for s in ((2, D, F), (2, D, F), (2, F, D))]
  idx = jnp.asarray([[[0], [0], [1], [0]]], jnp.int32)
  wt = jnp.asarray([[[0.5], [0.6], [0.7], [0.8]]], jnp.float32)
  valid = jnp.asarray([[True, True, True, True]])
  dispatch = _jit(lambda valid: moe.capacity_dispatch(x, idx, wt, valid, w, capacity=1))
  y, kept, routed = dispatch(valid)
  assert (int(kept), int(routed)) == (2, 4)
  np.testing.assert_allclose(y[0, 0], 0.5 * _ffn(x[0, 0], w[0][0], w[1][0], w[2][0]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y[0, 2], 0.7 * _ffn(x[0, 2], w[0][1], w[1][1], w[2][1]), rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(y[0, 1]).max()) == 0.0 and float(jnp.abs(y[0, 3]).max()) == 0.0
  # Padding never takes capacity: with token 0 padded, token 1 gets expert 0's slot.
  y, kept, routed = dispatch(valid.at[0, 0].set(False))
  assert (int(kept), int(routed)) == (2, 3)
  assert float(jnp.abs(y[0, 0]).max()) == 0.0
  np.testing.assert_allclose(y[0, 1], 0.6 * _ffn(x[0, 1], w[0][0], w[1][0], w[2][0]), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- backends and meshes, block level

# name -> (backend, grouped matmul, train capacity factor). cf 4 = E/k: a sequence can send all
# its tokens to one expert without drops; cf 1 drops (and must drop the same on every mesh).
VARIANTS = {
    "dense": ("dense", "auto", 4.0),
    "capacity": ("capacity", "auto", 4.0),
    "capacity_tight": ("capacity", "auto", 1.0),
    "dropless": ("dropless", "chunked", 4.0),  # what auto picks on CPU
    "ragged_dot": ("dropless", "ragged_dot", 4.0),  # auto on GPU
    "megablox": ("dropless", "megablox", 4.0),  # auto on TPU; here in the Pallas interpreter
    "tokamax": ("dropless", "tokamax", 4.0),  # auto on GPU; here tokamax's XLA implementation
}
# Every backend on every mesh. megablox's shard_map is the one without varying-axes checks
# (moe.make_dispatch), so its gradient sums come from shard_map's transpose: it runs on the two
# meshes that together hold every axis those sums cross (fsdp + expert; data + expert + tensor).
# Its kernel is the same on every mesh (test_megablox_matches_ragged_dot) and the expert-axis
# exchange around it is the chunked kernel's, run on all five (off TPU it runs in the Pallas
# interpreter, the costly part of this matrix). tokamax (its XLA implementation and its own VJP
# here) runs on every mesh: it is the GPU kernel.
ON_MESHES = ("dense", "capacity_tight", "dropless", "ragged_dot", "tokamax")


# The same backends with a gated shared expert (Qwen2-MoE's layout) of its own width.
SHARED_F = 24
SHARED_VARIANTS = {f"{n}_shared": VARIANTS[n] for n in ("dense", "capacity", "dropless",
                                                        "ragged_dot", "megablox")}


def _spec(backend, gmm_impl, cf, shared=False):
  # 8 experts, 5 languages -> experts 0, 3, 5, 7, 7; weights large enough that routing is sharp.
  m = MoESpec(num_experts=E, top_k=2, d_ff=F, lang_to_expert=(0, 3, 5, 7, 7),
              language_routing="hybrid", router_init_std=0.5, backend=backend,
              grouped_matmul=gmm_impl, capacity_factor_train=cf,
              shared_d_ff=SHARED_F if shared else 0, shared_gate=shared)
  return ModelSpec(d_model=D, init_std=0.2, moe=m)


def _variant_spec(name):
  if name in SHARED_VARIANTS:
    return _spec(*SHARED_VARIANTS[name], shared=True)
  return _spec(*VARIANTS[name])


def _batch(forced: bool):
  """Two documents per row and 3 padding tokens; lang_ids -1 everywhere = nothing forced."""
  r = np.random.RandomState(1)
  x = r.randn(B, S, D).astype(np.float32)
  valid = np.ones((B, S), bool)
  valid[:, -3:] = False
  lang = np.where(np.arange(S) < S // 2, r.randint(0, 5, (B, 1)), r.randint(0, 5, (B, 1)))
  lang = np.where(valid & forced, lang, -1).astype(np.int32)
  ct = r.randn(B, S, D).astype(np.float32)
  return x, lang, valid, ct


def _loss_and_grads(names):
  """One jitted function: for each variant, (loss, y, dropped, grads wrt params and x)."""
  graphdefs = {n: nnx.split(MoEFeedForward(_variant_spec(n), rngs=nnx.Rngs(0)), nnx.Param)[0]
               for n in names}

  def loss(params, x, lang, valid, ct, name):
    y, aux = nnx.merge(graphdefs[name], params)(x, lang, valid, train=True)
    return jnp.sum(y * ct) + aux["lb_loss"] + aux["z_loss"], (y, aux["dropped_fraction"])

  def f(params, x, lang, valid, ct):
    out = {}
    for n in names:
      (l, (y, dropped)), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
          params, x, lang, valid, ct, n)
      out[n] = dict(loss=l, y=y, dropped=dropped, grads=g)
    return out
  return _jit(f)


def _params(shared=False):
  return nnx.to_pure_dict(nnx.state(MoEFeedForward(_spec("dense", "auto", 4.0, shared),
                                                   rngs=nnx.Rngs(0)), nnx.Param))


@pytest.fixture(scope="module")
def single_device():
  f = _loss_and_grads(tuple(VARIANTS))
  dev = jax.devices()[0]
  return {forced: jax.device_get(f(*jax.device_put((_params(),) + _batch(forced), dev)))
          for forced in (True, False)}


def _assert_close(got, want, what):
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, err_msg=what)
  np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-5, err_msg=what)
  np.testing.assert_allclose(got["dropped"], want["dropped"], atol=1e-7, err_msg=what)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=what),
               got["grads"], want["grads"])


@pytest.mark.parametrize("forced", [True, False])
def test_backends_agree_when_nothing_dropped(single_device, forced):
  res = single_device[forced]
  for name in ("capacity", "dropless", "ragged_dot", "megablox", "tokamax"):
    assert float(res[name]["dropped"]) == 0.0, name
    _assert_close(res[name], res["dense"], f"{name} vs dense, forced={forced}")
  # The tight capacity really drops here, so the mesh tests below compare drops too.
  assert float(res["capacity_tight"]["dropped"]) > 0.05
  # Forcing changes the routing (and so the output) of tagged tokens.
  other = single_device[not forced]["dense"]
  assert np.abs(np.asarray(res["dense"]["y"]) - np.asarray(other["y"])).max() > 1e-2


@pytest.fixture(scope="module")
def single_device_shared():
  f = _loss_and_grads(tuple(SHARED_VARIANTS))
  dev = jax.devices()[0]
  return jax.device_get(f(*jax.device_put((_params(shared=True),) + _batch(True), dev)))


def test_shared_expert_adds_its_gated_output_on_every_backend(single_device,
                                                              single_device_shared):
  res = single_device_shared
  for name in ("capacity_shared", "dropless_shared", "ragged_dot_shared", "megablox_shared"):
    assert float(res[name]["dropped"]) == 0.0, name
    _assert_close(res[name], res["dense_shared"], f"{name} vs dense_shared")
  # By value: the routed experts' output (the same first draws of nnx.Rngs(0)) plus
  # sigmoid(x . g) * SwiGLU_shared(x), on every token, padding included.
  p = _params(shared=True)
  assert set(p) == {"router", "wi_gate", "wi_up", "wo", "shared_expert", "shared_expert_gate"}
  assert p["shared_expert"]["gate_proj"]["kernel"].shape == (D, SHARED_F)
  assert p["shared_expert_gate"]["kernel"].shape == (D, 1)
  base = _params()
  jax.tree.map(np.testing.assert_array_equal, base, {k: p[k] for k in base})
  x = _batch(True)[0]
  se = p["shared_expert"]
  shared = _ffn(x, se["gate_proj"]["kernel"], se["up_proj"]["kernel"], se["down_proj"]["kernel"])
  gate = jax.nn.sigmoid(x @ p["shared_expert_gate"]["kernel"])
  np.testing.assert_allclose(res["dense_shared"]["y"], single_device[True]["dense"]["y"] + gate * shared,
                             rtol=1e-5, atol=1e-5)
  assert float(np.abs(gate * shared).max()) > 0.1  # the shared expert changes the output
  # Its parameters get gradients (it trains) and the gate's gradient is not zero.
  g = res["dense_shared"]["grads"][0]
  assert float(np.abs(g["shared_expert_gate"]["kernel"]).max()) > 0
  assert float(np.abs(g["shared_expert"]["down_proj"]["kernel"]).max()) > 0


@pytest.mark.parametrize("mesh_shape", [dict(expert=8), dict(fsdp=2, expert=4),
                                        dict(data=2, expert=2, tensor=2)])
def test_shared_expert_mesh_equals_single_device(single_device_shared, mesh_shape):
  names = ("dense_shared", "capacity_shared", "dropless_shared")
  dims = [mesh_shape.get(a, 1) for a in cfg_lib.MESH_AXES]
  mesh = Mesh(np.asarray(jax.devices()).reshape(dims), cfg_lib.MESH_AXES)
  abstract = nnx.state(nnx.eval_shape(lambda: MoEFeedForward(_spec("dense", "auto", 4.0, True),
                                                             rngs=nnx.Rngs(0))), nnx.Param)
  params = jax.device_put(_params(shared=True), sharding.state_shardings(abstract, mesh))
  batch = jax.device_put(_batch(True), NamedSharding(mesh, P(sharding.BATCH_AXES)))
  with jax.set_mesh(mesh):
    out = jax.device_get(_loss_and_grads(names)(params, *batch))
  for name in names:
    _assert_close(out[name], single_device_shared[name], f"{name} on {mesh_shape}")
  # The shared expert is sharded as the dense FFN: width over tensor, d_model over fsdp.
  kernel = params["shared_expert"]["gate_proj"]["kernel"]
  assert kernel.sharding.shard_shape(kernel.shape) == (D // mesh_shape.get("fsdp", 1),
                                                       SHARED_F // mesh_shape.get("tensor", 1))


@pytest.mark.parametrize("mesh_shape, names", [
    (dict(expert=8), ON_MESHES), (dict(data=2, expert=4), ON_MESHES),
    (dict(data=4, expert=2), ON_MESHES), (dict(fsdp=2, expert=4), ON_MESHES + ("megablox",)),
    # The tensor axis adds one psum for every backend; two kernels keep compile time down.
    (dict(data=2, expert=2, tensor=2), ("dropless", "megablox"))])
def test_mesh_equals_single_device(single_device, mesh_shape, names):
  dims = [mesh_shape.get(a, 1) for a in cfg_lib.MESH_AXES]
  mesh = Mesh(np.asarray(jax.devices()).reshape(dims), cfg_lib.MESH_AXES)
  params = _params()
  abstract = nnx.state(nnx.eval_shape(lambda: MoEFeedForward(_spec("dense", "auto", 4.0),
                                                             rngs=nnx.Rngs(0))), nnx.Param)
  params = jax.device_put(params, sharding.state_shardings(abstract, mesh))
  batch_sharding = NamedSharding(mesh, P(sharding.BATCH_AXES))
  f = _loss_and_grads(names)
  for forced in (True, False):  # same shapes: compiled once, run with and without forcing
    batch = jax.device_put(_batch(forced), batch_sharding)
    with jax.set_mesh(mesh):
      out = jax.device_get(f(params, *batch))
    for name in names:
      _assert_close(out[name], single_device[forced][name], f"{name} on {mesh_shape}, forced={forced}")
  # The expert weights really are split over the expert axis.
  assert params["wo"].sharding.spec[0] == "expert"


def test_uneven_expert_split_is_an_error():
  mesh = Mesh(np.asarray(jax.devices()[:3]).reshape(1, 1, 3, 1), cfg_lib.MESH_AXES)
  m = MoEFeedForward(_spec("dropless", "chunked", 4.0), rngs=nnx.Rngs(0))
  x, lang, valid, _ = _batch(True)
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="config.mesh.expert"):
    jax.eval_shape(lambda: m(jnp.asarray(x[:3]), jnp.asarray(lang[:3]), jnp.asarray(valid[:3]),
                             train=True))


def test_config_accepts_backends_and_rejects_unknown():
  from conftest import load_config
  for backend in ("auto", "dropless", "capacity", "dense"):
    c = load_config("post_moe")
    c.moe.backend = backend
    cfg_lib.validate(c, 1)
    assert cfg_lib.model_spec(c).moe.backend == backend
  c = load_config("post_moe")
  c.moe.grouped_matmul = "cublas"
  with pytest.raises(cfg_lib.ConfigError, match="config.moe.grouped_matmul"):
    cfg_lib.validate(c, 1)


@pytest.mark.parametrize("key, value, err", [
    ("shared_expert_d_ff", -1, "config.moe.shared_expert_d_ff"),
    ("shared_expert_d_ff", 1.5, "config.moe.shared_expert_d_ff"),
    ("shared_expert_gate", True, "config.moe.shared_expert_gate")])
def test_config_rejects_bad_shared_expert(key, value, err):
  from conftest import load_config
  c = load_config("post_moe")
  with c.ignore_type():
    c.moe[key] = value
  with pytest.raises(cfg_lib.ConfigError, match=err):
    cfg_lib.validate(c, 1)
  c = load_config("post_moe")
  c.moe.shared_expert_d_ff, c.moe.shared_expert_gate = 64, True
  cfg_lib.validate(c, 1)
  assert (cfg_lib.model_spec(c).moe.shared_d_ff, cfg_lib.model_spec(c).moe.shared_gate) == (64, True)
