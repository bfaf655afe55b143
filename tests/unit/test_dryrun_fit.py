"""The dry run on a target's devices: which MoE kernel each platform runs and the FLOPs it costs
(the MFU bound), and, when the mesh given does not fit the devices' memory, a mesh that does."""
import sys

import jax
import pytest

from conftest import load_config
from medmoe_jax import dryrun, sharding



def _small_post_moe():
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=512, d_model=64, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=96))
  c.data.update(dict(seq_len=16, batch_size=2))
  return c


def _flops(c, platform):
  return dryrun.step_flops(c, sharding.make_mesh(c, jax.devices()[:1]), platform)


# Per MoE layer (2 of them, 7 experts, top-2) and token-slot: 3 SwiGLU matmuls, forward and both
# gradients; dropless adds the routing-weight gradient's [slots, D] dot.
TOKENS, D, F, E, K, MOE_LAYERS = 2 * 16, 64, 96, 7, 2, 2
PER_EXPERT_TOKEN = 3 * 3 * 2 * D * F
COMBINE_WEIGHT_GRAD = 2 * TOKENS * K * D


def test_each_platform_counts_the_kernel_it_runs(monkeypatch):
  c = _small_post_moe()
  active = _flops(c, "cpu")                       # chunked on CPU: the active experts
  assert dryrun.moe_kernel(c, "cpu") == "dropless/chunked"
  assert dryrun.moe_kernel(c, "tpu") == "dropless/megablox"
  assert _flops(c, "tpu") == active

  # GPU with tokamax importable: its grouped GEMM, the active experts.
  pytest.importorskip("tokamax")
  assert dryrun.moe_kernel(c, "gpu") == "dropless/tokamax"
  assert _flops(c, "gpu") == active

  # GPU without tokamax: `auto` runs the dense backend there, every expert on every token.
  monkeypatch.setitem(sys.modules, "tokamax", None)   # `import tokamax` now raises ImportError
  assert dryrun.moe_kernel(c, "gpu") == "dense"
  dense = _flops(c, "gpu")
  assert dense - active == MOE_LAYERS * (TOKENS * (E - K) * PER_EXPERT_TOKEN - COMBINE_WEIGHT_GRAD)
  assert _flops(c, "tpu") == active               # TPU is unaffected


def test_xla_ragged_dot_on_gpu_counts_every_group_over_every_row():
  c = _small_post_moe()
  c.moe.grouped_matmul = "ragged_dot"
  assert dryrun.moe_kernel(c, "gpu") == "dropless/ragged_dot"
  active = _flops(c, "tpu")
  padded = _flops(c, "gpu")
  # Each of the TOKENS * K sorted rows meets all E experts' weights instead of its own one.
  assert padded - active == MOE_LAYERS * (E - 1) * TOKENS * K * PER_EXPERT_TOKEN


def test_dry_run_reports_the_kernel_and_bounds_the_step_with_its_flops(monkeypatch):
  c = _small_post_moe()
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
