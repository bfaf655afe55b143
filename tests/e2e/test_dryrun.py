"""The dry run: compile the 7b train step for 64 devices on fake CPU devices and report memory,
FLOPs and the MFU-bound step time (and, on a small model, the MoE kernel the platform runs);
refuse invalid meshes and jobs that cannot fit, early."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, load_config
from helpers import (COMBINE_WEIGHT_GRAD, MOE_LAYERS, PER_EXPERT_TOKEN, TOKENS, E, K,
                     small_post_moe_for_flops)
from medmoe_jax import config as cfg_lib
from medmoe_jax import dryrun, sharding
from medmoe_jax.model import Transformer
from medmoe_jax.train import Trainer

GIB = 1024**3


def _cli(*args):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the dry run makes its own fake devices
  return subprocess.run([sys.executable, "-m", "medmoe_jax.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name, devices", [("v5p-64", 32), ("v5p-8", 4), ("v6e-16", 16),
                                           ("h100-8", 8)])
def test_topology_counts_jax_devices(name, devices):
  t = dryrun.parse_topology(name, None)
  assert t.num_devices == devices
  assert t.accelerator.peak_bf16_flops > 0 and t.accelerator.memory_bytes > 0


@pytest.mark.parametrize("name, num, err", [
    ("v5p-63", None, "multiple of 2"), ("tpu-8", None, "use v5p-N"),
    ("v6e-8", 4, "disagrees"), (None, None, "needs --topology")])
def test_bad_topology_is_named(name, num, err):
  with pytest.raises(dryrun.DryRunError, match=err):
    dryrun.parse_topology(name, num)


def test_matmul_flops_scans_and_backward():
  # A scanned stack of L matmuls: forward 2*B*D*D per layer; backward twice that.
  b, d, layers = 8, 32, 5

  def loss(w, x):
    h, _ = jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)
    return jnp.sum(h)

  jaxpr = jax.make_jaxpr(jax.grad(loss))(jnp.zeros((layers, d, d)), jnp.zeros((b, d)))
  assert dryrun.matmul_flops(jaxpr) == 3 * layers * 2 * b * d * d


def test_train_step_flops_equal_the_dense_formula():
  c = load_config("dense")
  c.model.update(dict(vocab_size=512, d_model=64, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=96))
  c.data.update(dict(seq_len=16, batch_size=2))
  t = Trainer(c, "", mesh=sharding.make_mesh(c, jax.devices()[:1])).setup_step()
  flops = dryrun.matmul_flops(t.train_step.trace(*t.abstract_step_inputs()).jaxpr)
  b, s, d, h, kv, dh, f, v, layers = 2, 16, 64, 4, 2, 16, 96, 512, 3
  per_layer = d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * f      # q, k, v, o, SwiGLU
  forward = 2 * b * s * (layers * per_layer + d * v) + layers * 2 * (2 * b * h * s * s * dh)
  per_language_sums = 2 * (2 * b * s * len(c.languages.use))             # metrics, no backward
  assert flops == 3 * forward + per_language_sums


def test_dropless_moe_flops_count_the_active_experts():
  """The chunked kernel's loops run a data-dependent number of times, so its FLOPs are counted
  on the ragged_dot version of the step: exactly the dense backend's (every expert on every
  token) less the E - k experts a token does not use."""
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=512, d_model=64, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=96))
  c.data.update(dict(seq_len=16, batch_size=2))
  counted = {}
  for backend in ("dense", "dropless"):
    c.moe.backend = backend
    fc = dryrun.flops_config(c)
    assert fc.moe.grouped_matmul == ("ragged_dot" if backend == "dropless" else "auto")
    t = Trainer(fc, "", mesh=sharding.make_mesh(fc, jax.devices()[:1])).setup_step()
    counted[backend] = dryrun.matmul_flops(t.train_step.trace(*t.abstract_step_inputs()).jaxpr)
  c.moe.grouped_matmul = "megablox"  # its matmuls hide in Pallas tiles: counted as ragged_dot too
  assert dryrun.flops_config(c).moe.grouped_matmul == "ragged_dot"
  tokens, d, f, e, k, moe_layers = 2 * 16, 64, 96, 7, 2, 2
  per_expert_token = 3 * 3 * 2 * d * f                 # 3 matmuls, forward + 2 gradients
  combine_weight_grad = 2 * tokens * k * d             # dropless's routing-weight gradient dot
  assert counted["dense"] - counted["dropless"] == moe_layers * (
      tokens * (e - k) * per_expert_token - combine_weight_grad)


def test_shared_expert_flops_and_parameters_are_counted():
  """A gated shared expert of width Fs adds, per MoE layer and token, its three SwiGLU matmuls
  and the gate's D -> 1 matmul, forward and both gradients, on every backend; and its
  parameters to the memory report."""
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=512, d_model=64, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=96))
  c.data.update(dict(seq_len=16, batch_size=2))
  tokens, d, fs, moe_layers = 2 * 16, 64, 40, 2
  for backend in ("dense", "dropless"):
    counted, n_params = {}, {}
    for width in (0, fs):
      c.moe.backend = backend
      c.moe.shared_expert_d_ff, c.moe.shared_expert_gate = width, bool(width)
      fc = dryrun.flops_config(c)
      t = Trainer(fc, "", mesh=sharding.make_mesh(fc, jax.devices()[:1])).setup_step()
      counted[width] = dryrun.matmul_flops(t.train_step.trace(*t.abstract_step_inputs()).jaxpr)
      abstract = t.abstract_step_inputs()[0].params
      n_params[width] = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))
    assert counted[fs] - counted[0] == moe_layers * 3 * 2 * tokens * (3 * d * fs + d), backend
    assert n_params[fs] - n_params[0] == moe_layers * (3 * d * fs + d)


def test_invalid_mesh_fails_before_compiling():
  # 64 devices, but the mesh asks for 3 x 8: config validation stops it, no compile.
  c = load_config("post_moe", "7b")
  c.mesh.update(dict(data=3, fsdp=8))
  with pytest.raises(cfg_lib.ConfigError, match=r"config.mesh: .* uses 24 devices but 64"):
    dryrun.run(c, num_devices=64)
  c.mesh.update(dict(data=1, fsdp=-1))  # batch 32 does not split over 64 devices
  with pytest.raises(cfg_lib.ConfigError, match="config.data.batch_size: 32 is not divisible"):
    dryrun.run(c, topology="v5p-128")


def test_what_cannot_fit_fails_before_compiling():
  # 7b, data parallel only, 8 x v6e (32 GiB): f32 parameters + Adam alone are ~127 GB a device.
  c = load_config("post_moe", "7b")
  c.data.batch_size = 8
  c.mesh.update(dict(data=-1, fsdp=1))  # 7b's default mesh is FSDP over every device
  with pytest.raises(dryrun.DryRunError, match=r"already exceed the 32.00 GiB .* shard them with config.mesh.fsdp"):
    dryrun.run(c, topology="v6e-8", suggest=False)


def test_7b_on_8_devices_of_40_gib_suggests_the_smallest_fsdp_that_fits():
  """7b (10.1B parameters with its experts: 113 GiB of f32 parameters and Adam moments) on 8
  devices of 40 GiB, data parallel: the state alone does not fit. fsdp=2 leaves 56 GiB of state
  a device (skipped before compiling); fsdp=4 28 GiB, but with its gradients and temporaries
  the compiled step does not fit; fsdp=8 does. Short rows keep the compiles small; the
  parameters are the real 7b ones."""
  c = load_config("post_moe", "7b")
  c.data.update(dict(seq_len=128, batch_size=8))
  c.mesh.update(dict(data=-1, fsdp=1))
  gpu40 = dryrun.Topology("8 x 40 GiB", dryrun.Accelerator("40 GiB GPU", 312e12, 40 * GIB,
                                                           "GPUs", 1, "gpu"), 8)
  assert [m["fsdp"] for m in dryrun.candidate_meshes(c, 8)] == [1, 2, 4, 8]
  with pytest.raises(dryrun.DoesNotFit, match=r"already exceed the 40.00 GiB .*on the same "
                     r"devices the mesh \{'data': 1, 'fsdp': 8, 'expert': 1, 'tensor': 1\} fits: "
                     r"3\d.\d\d GiB per device \(--config.mesh.data=1 --config.mesh.fsdp=8 ") as e:
    dryrun.run(c, gpu40)
  r = e.value.suggestion
  shapes = nnx.eval_shape(lambda: Transformer(cfg_lib.model_spec(c), rngs=nnx.Rngs(0)))
  n = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(shapes, nnx.Param)))
  assert 9.5e9 < n < 11e9
  assert r["params_bytes_per_device"] == pytest.approx(4 * n / 8, rel=0.01)       # 4.7 GiB
  assert r["optimizer_bytes_per_device"] == pytest.approx(8 * n / 8, rel=0.01)    # 9.4 GiB
  assert 30 * GIB < r["total_bytes_per_device"] <= 40 * GIB
  tried = {t["mesh"]["fsdp"]: t for t in r["meshes_tried"]}
  assert sorted(tried) == [2, 4, 8]
  assert tried[2]["state_bytes_per_device"] == pytest.approx(12 * n / 2, rel=0.01)
  assert tried[2]["total_bytes_per_device"] is None                  # never compiled
  assert tried[4]["state_bytes_per_device"] == pytest.approx(12 * n / 4, rel=0.01)
  assert tried[4]["total_bytes_per_device"] > 40 * GIB               # compiled: too big
  assert tried[8]["total_bytes_per_device"] == r["total_bytes_per_device"]


def test_cli_prints_the_mesh_that_fits_and_fails_in_one_line():
  # 7b data parallel on v5p-16 (8 devices of 95 GiB): 113 GiB of state a device. The CLI prints
  # the report of the first fsdp that fits, its JSON, and one error line with the flags; exit 2.
  r = _cli("--config=configs/post_moe.py:7b", "--dry_run", "--topology=v5p-16",
           "--config.mesh.data=-1", "--config.mesh.fsdp=1", "--config.data.seq_len=128",
           "--config.data.batch_size=8")
  assert r.returncode == 2, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("dry run failed: post_moe (7b) on v5p-16: parameters "), last
  found = json.loads([l for l in r.stdout.splitlines()
                      if l.startswith("DRYRUN_SUGGESTION_JSON ")][-1].split(" ", 1)[1])
  assert "a mesh that fits on the same devices:" in r.stdout
  assert found["mesh"]["fsdp"] in (2, 4, 8) and found["mesh"]["data"] * found["mesh"]["fsdp"] == 8
  assert found["total_bytes_per_device"] <= 95 * GIB
  assert 3 * found["params_bytes_per_device"] * found["mesh"]["fsdp"] > 95 * GIB  # unsharded params + Adam
  assert dryrun.mesh_flags(found["mesh"]) in last
  assert found["moe_kernel"] == "dropless/megablox"
  smaller = [t for t in found["meshes_tried"] if t["mesh"]["fsdp"] < found["mesh"]["fsdp"]]
  assert all(t["state_bytes_per_device"] > 95 * GIB or t["total_bytes_per_device"] > 95 * GIB
             for t in smaller)


def test_cli_reports_a_bad_mesh_in_one_line():
  r = _cli("--config=configs/post_moe.py:7b", "--dry_run", "--topology=v5p-128",
           "--config.mesh.expert=3")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("dry run failed: config.mesh:")


def test_dry_run_reports_the_kernel_and_bounds_the_step_with_its_flops(monkeypatch):
  c = small_post_moe_for_flops()
  h100 = dryrun.parse_topology("h100-2", None)
  with_kernel = dryrun.run(c, h100, check_fit=False)
  monkeypatch.setitem(sys.modules, "tokamax", None)
  without = dryrun.run(c, h100, check_fit=False)
  assert (with_kernel["moe_kernel"], without["moe_kernel"]) == ("dropless/tokamax", "dense")
  assert "install tokamax" in without["moe_kernel_note"] and with_kernel["moe_kernel_note"] is None
  extra = MOE_LAYERS * (TOKENS * (E - K) * PER_EXPERT_TOKEN - COMBINE_WEIGHT_GRAD)
  assert without["flops_per_step"] - with_kernel["flops_per_step"] == extra
  for r in (with_kernel, without):
    assert r["mfu_bound_step_s"] == pytest.approx(r["flops_per_step"] / 2 / 989e12)


@pytest.fixture(scope="module")
def report_7b():
  # The paper's 7b Post-MoE (bf16, 4096-token rows, remat) on v5p-128 = 64 chips, FSDP over all
  # of them: 64 rows a step, one per device.
  r = _cli("--config=configs/post_moe.py:7b", "--dry_run", "--topology=v5p-128",
           "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.data.batch_size=64")
  assert r.returncode == 0, r.stderr[-3000:]
  line = [l for l in r.stdout.splitlines() if l.startswith("DRYRUN_JSON ")][-1]
  return json.loads(line[len("DRYRUN_JSON "):]), r.stdout


def test_7b_on_64_devices_reports_memory_flops_and_step_time(report_7b):
  r, text = report_7b
  assert r["num_devices"] == 64 and r["mesh"]["fsdp"] == 64
  assert "per device: parameters" in text and "MFU-bound step time" in text

  # Parameters: FSDP splits every large parameter 64 ways.
  c = load_config("post_moe", "7b")
  shapes = nnx.eval_shape(lambda: Transformer(cfg_lib.model_spec(c), rngs=nnx.Rngs(0)))
  params = jax.tree.leaves(nnx.state(shapes, nnx.Param))
  n_params = sum(math.prod(p.shape) for p in params)
  assert 9.5e9 < n_params < 11e9                   # Qwen2-7B (7.6B) + 6 more experts x 2 layers
  assert r["params_bytes_per_device"] == pytest.approx(4 * n_params / 64, rel=0.01)
  assert r["optimizer_bytes_per_device"] == pytest.approx(2 * r["params_bytes_per_device"], rel=1e-3)
  # XLA's argument buffers are exactly what the shardings say: params + Adam + batch (+ rng key).
  ours = r["params_bytes_per_device"] + r["optimizer_bytes_per_device"] + r["batch_bytes_per_device"]
  assert 0 <= r["argument_bytes_per_device"] - ours <= 64
  assert r["activation_temp_bytes_per_device"] > 1 << 30
  assert r["total_bytes_per_device"] < r["device_memory_bytes"]

  # FLOPs: about 6 N T over the parameters a token uses: dropless top-2 runs 2 of the 7 experts,
  # and the embedding is a lookup, not a matmul; attention adds ~11%. Step time = FLOPs / peak.
  tokens = 64 * 4096
  m = c.model
  unused = 2 * 3 * m.d_model * m.d_ff * (7 - 2) + m.vocab_size * m.d_model
  assert 1.0 < r["flops_per_step"] / (6 * (n_params - unused) * tokens) < 1.2
  assert r["flops_per_device"] == pytest.approx(r["flops_per_step"] / 64)
  assert r["mfu_bound_step_s"] == pytest.approx(r["flops_per_device"] / 459e12)
  # XLA's own count sees each scanned layer stack once: far below the real step.
  assert r["xla_flops_per_device"] < r["flops_per_device"] / 2
  assert np.isfinite(r["compile_s"])


def test_data_and_fsdp_mesh_compiles_without_replicating_the_batch():
  """With data and fsdp both > 1, the embedding's backward used to make XLA's partitioner
  gather the whole batch's [B, S, D] cotangent on every device (layers.embed_lookup); it logs
  that as an "involuntary full rematerialization" while compiling."""
  r = _cli("--config=configs/post_moe.py", "--dry_run", "--num_devices=8",
           "--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.data.seq_len=128")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Involuntary full rematerialization" not in r.stderr, r.stderr[-3000:]
