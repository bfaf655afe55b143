"""The README's method recipe as a user types it, from a fresh working directory: dense ->
MoE-LPR stage 1 -> stage 2 -> the eval job, with relative default paths (workdir/dense as stage
1's upcycle source, workdir/moe_lpr_stage1 as stage 2's); the eval report labels the experts as
MoE-LPR defines them (expert 0 = the original FFN, the rest new), with the original and the new
languages' rows, read from the real run's output."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

# The README's tiny overrides, and a smaller model (every stage alike, so each upcycles the last):
# compiling the steps is most of the time.
TINY = ["--config.train.steps=2", "--config.data.seq_len=32", "--config.data.batch_size=2",
        "--config.data.data_dir=data", "--config.mesh.data=1", "--config.model.num_layers=2",
        "--config.model.d_model=32", "--config.model.d_ff=64", "--config.model.num_heads=2",
        "--config.model.num_kv_heads=1"]
EVAL_TINY = ["--config.tasks=perplexity,routing", "--config.perplexity.max_batches=1",
             "--config.perplexity.data_dir=data", "--config.progress=False", "--config.mesh.data=1"]
FAMILIES = ("Sino-Tibetan", "Altaic", "Australasian", "Austronesian")


def _run(cwd, module, config, args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  p = subprocess.run([sys.executable, "-m", f"medmoe_jax.{module}", f"--config={REPO}/configs/{config}",
                      *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "Traceback" not in p.stderr
  return p


def _train(cwd, config):
  return _run(cwd, "train", f"{config}.py", TINY)


@pytest.mark.e2e
def test_dense_lpr_stage1_stage2_then_eval_with_relative_default_paths(tmp_path):
  _train(tmp_path, "dense")
  assert os.listdir(tmp_path / "workdir" / "dense" / "checkpoints") == ["2"]
  p = _train(tmp_path, "moe_lpr_stage1")
  assert f"upcycled (lpr) from {tmp_path / 'workdir' / 'dense'}" in p.stdout
  saved = json.loads((tmp_path / "workdir" / "moe_lpr_stage1" / "config.json").read_text())
  assert saved["upcycle"]["from"] == str(tmp_path / "workdir" / "dense")
  assert saved["data"]["data_dir"] == str(tmp_path / "data")
  _train(tmp_path, "moe_lpr_stage2")
  stage2 = json.loads((tmp_path / "workdir" / "moe_lpr_stage2" / "config.json").read_text())
  assert stage2["upcycle"]["from"] == str(tmp_path / "workdir" / "moe_lpr_stage1")

  # The README's eval command on the stage-2 run.
  _run(tmp_path, "eval", "eval.py", ["--config.checkpoint=workdir/moe_lpr_stage2",
                                     "--workdir=eval_out", *EVAL_TINY])
  check_lpr_report(tmp_path / "eval_out", stage2)


def check_lpr_report(out, stage2):
  """The eval job's results.json and report.md in `out` name MoE-LPR's experts as its paper
  does; stage2: the stage-2 run's saved config."""
  results = json.loads((out / "results.json").read_text())
  rt = results["evaluations"][-1]["routing"]
  assert rt["scheme"] == "lpr"
  assert rt["experts"] == ["expert 0 (original FFN)", "expert 1 (new)", "expert 2 (new)",
                           "expert 3 (new)"]
  original, new = stage2["languages"]["original"], [
      l for l in stage2["languages"]["use"] if l not in stage2["languages"]["original"]]
  assert rt["lpr"]["original"]["languages"] == [l for l in original if l in rt["languages"]]
  assert rt["lpr"]["new"]["languages"] == [l for l in new if l in rt["languages"]]
  assert rt["lpr"]["original"]["languages"] and rt["lpr"]["new"]["languages"]
  layers = len(rt["layers"])
  for group in ("original", "new"):
    shares, probs = rt["lpr"][group]["expert0_share"], rt["lpr"][group]["expert0_prob"]
    assert len(shares) == len(probs) == layers
    assert all(0.0 <= x <= 1.0 for x in shares + probs)
  assert all(v["own_expert_name"] is None for v in rt["languages"].values())

  report = (out / "report.md").read_text()
  routing_part = report.split("## Routing")[1]
  assert "experts: expert 0 (original FFN), expert 1 (new), expert 2 (new), expert 3 (new)" in routing_part
  assert "MoE-LPR: expert 0 is the frozen original FFN" in routing_part
  for group in ("original", "new"):  # the run's own numbers, as percentages
    g = rt["lpr"][group]
    row = " | ".join([f"{group} ({', '.join(g['languages'])})"]
                     + [f"{100 * x:.1f}" for x in g["expert0_share"] + g["expert0_prob"]])
    assert f"| {row} |" in routing_part, routing_part
  assert "| languages | expert-0 share L0 | expert-0 share L1 | expert-0 prob L0 | expert-0 prob L1 |" \
      in routing_part
  assert "own expert" not in routing_part
  assert not any(f in report for f in FAMILIES), report
