"""Which MoE kernel the dry run counts on each platform and the FLOPs it costs (the MFU bound).
The dry run's own report (a compiled step) is tests/e2e/test_dryrun.py's."""
import sys

import jax
import pytest

from helpers import (COMBINE_WEIGHT_GRAD, MOE_LAYERS, PER_EXPERT_TOKEN, TOKENS, E, K,
                     small_post_moe_for_flops as _small_post_moe)
from medmoe_jax import dryrun, sharding


def _flops(c, platform):
  return dryrun.step_flops(c, sharding.make_mesh(c, jax.devices()[:1]), platform)


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

