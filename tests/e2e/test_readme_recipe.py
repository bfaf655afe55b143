"""The README's method recipe as a user types it, from a fresh working directory: relative
default paths (workdir/dense as MoE-LPR stage 1's upcycle source) work."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

TINY = ["--config.train.steps=2", "--config.data.seq_len=32", "--config.data.batch_size=2",
        "--config.data.data_dir=data", "--config.mesh.data=1"]


def _train(cwd, config):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  p = subprocess.run([sys.executable, "-m", "medmoe_jax.train", f"--config={REPO}/configs/{config}.py",
                      *TINY], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "Traceback" not in p.stderr
  return p


@pytest.mark.e2e
def test_dense_then_lpr_stage1_with_relative_default_paths(tmp_path):
  _train(tmp_path, "dense")
  assert os.listdir(tmp_path / "workdir" / "dense" / "checkpoints") == ["2"]
  p = _train(tmp_path, "moe_lpr_stage1")
  assert f"upcycled (lpr) from {tmp_path / 'workdir' / 'dense'}" in p.stdout
  saved = json.loads((tmp_path / "workdir" / "moe_lpr_stage1" / "config.json").read_text())
  assert saved["upcycle"]["from"] == str(tmp_path / "workdir" / "dense")
  assert saved["data"]["data_dir"] == str(tmp_path / "data")
