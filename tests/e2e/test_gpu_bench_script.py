"""bench/gpu_step.py, the one prepared script for a lent GPU, runs end to end on CPU at
`--size tiny` (a GPU's time is scarce: a script that breaks there wastes it). What it measures
there is meaningless; that it runs, writes its JSON and records every variant is checked."""
import json
import math
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_step_script_runs_and_writes_its_json(tmp_path):
  out = tmp_path / "gpu_step.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)  # one device, as on one GPU
  proc = subprocess.run(
      [sys.executable, "bench/gpu_step.py", "--size", "tiny", "--batch", "2", "--seq", "32",
       "--steps", "1", "--kernels", "tokamax", "--hf", "eager", "--out", str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(out.read_text())
  assert (record["bench"], record["size"], record["device"]) == ("gpu_step", "tiny", "cpu")
  assert record["tokamax_available"] is True  # the `test` extra installs tokamax
  assert list(record["ours"]) == ["tokamax"] and list(record["hf"]) == ["eager"]
  for variant in (record["ours"]["tokamax"], record["hf"]["eager"]):
    assert "error" not in variant, variant
    assert variant["tokens_per_s"] > 0 and variant["mfu"] is None  # no bf16 peak known for a CPU
    assert math.isfinite(variant["loss"]) and 5 < variant["loss"] < 12  # ~ln(vocab) at init
