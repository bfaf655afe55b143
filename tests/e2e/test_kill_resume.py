"""Real processes, real signals: a run killed (SIGKILL) at several points, one of them inside an
async checkpoint save, then preempted (SIGTERM), and restarted with the same command each time,
ends with exactly the parameters and metrics history of a run that was never interrupted.

Each `python -m medmoe_jax.train` pays imports and tracing (~5-10 s of CPU); the compiled
programs come from the persistent compilation cache shared with the pytest run, and the
reference run goes in parallel with the interrupted ones.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from conftest import REPO
from helpers import final_params, metrics_history, tiny_train_flags
from medmoe_jax.checkpoint import PAUSE_ENV
from medmoe_jax.training.faults import EXIT_PREEMPTED

STEPS = 14
ARGS = tiny_train_flags(STEPS)
HANG_GUARD_S = 300  # not a timing assertion: only keeps a broken run from hanging CI


def _env(**extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop run
  env.update(JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "medmoe_jax_test_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.update(extra)
  return env


class Run:
  """One `python -m medmoe_jax.train` process with its output in a log file."""

  def __init__(self, workdir, data_dir, log, **env):
    self.log = log
    self._out = open(log, "wb")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "medmoe_jax.train", *ARGS, f"--config.data.data_dir={data_dir}",
         f"--workdir={workdir}"], cwd=REPO, env=_env(**env), stdout=self._out,
        stderr=subprocess.STDOUT)

  def text(self) -> str:
    with open(self.log, encoding="utf-8", errors="replace") as f:
      return f.read()

  def wait_until(self, predicate, what):
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
      if self.proc.poll() is not None:
        pytest.fail(f"process exited ({self.proc.returncode}) before {what}:\n{self.text()[-3000:]}")
      if time.monotonic() > deadline:
        self.proc.kill()
        pytest.fail(f"gave up waiting for {what}:\n{self.text()[-3000:]}")
      time.sleep(0.02)

  def signal(self, sig) -> int:
    self.proc.send_signal(sig)
    return self.finish()

  def finish(self) -> int:
    try:
      rc = self.proc.wait(HANG_GUARD_S)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      pytest.fail(f"process did not exit:\n{self.text()[-3000:]}")
    self._out.close()
    return rc


def _steps(ckpt_dir):
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def test_sigkill_sigterm_and_restart_equal_an_uninterrupted_run(tmp_path):
  from medmoe_jax.data import sources
  data = str(tmp_path / "data")
  sources.build_text_source(sources.sample_files(), data, "medmoe_text")  # once, not per process
  run, ref = str(tmp_path / "run"), str(tmp_path / "ref")
  ckpts = os.path.join(run, "checkpoints")

  # 1. SIGKILL inside the async save of step 4: every file written, the commit (rename) not done.
  a = Run(run, data, tmp_path / "a.log", **{PAUSE_ENV: "4:600"})
  a.wait_until(lambda: "checkpoint step 4 is fully written" in a.text(), "the save of step 4")
  half = [n for n in os.listdir(ckpts) if n.startswith("4.orbax-checkpoint-tmp")]
  assert half and os.listdir(os.path.join(ckpts, half[0])), os.listdir(ckpts)
  assert a.signal(signal.SIGKILL) == -signal.SIGKILL
  # The uninterrupted run starts now, when the compiled step is in the cache, and runs alongside.
  reference = Run(ref, data, tmp_path / "ref.log")
  assert _steps(ckpts) == [2]  # the half-written step 4 is not a checkpoint

  # 2. Restart: resumes from 2, never from the half-written 4; SIGKILL at whatever step it has
  #    reached once step 6 is committed. The save of 10 is held open, so the process is
  #    certainly still training when the kill lands.
  b = Run(run, data, tmp_path / "b.log", **{PAUSE_ENV: "10:600"})
  b.wait_until(lambda: 6 in _steps(ckpts), "checkpoint 6")
  assert b.signal(signal.SIGKILL) == -signal.SIGKILL
  assert "resuming from checkpoint step 2" in b.text()
  assert not [n for n in os.listdir(ckpts) if n.startswith("4.orbax")]  # leftover cleaned up
  last = _steps(ckpts)[-1]
  assert last in (6, 8)

  # 3. Restart, then SIGTERM while the save of last+2 is in flight: the run checkpoints the
  #    step it is at and exits with the documented code.
  c = Run(run, data, tmp_path / "c.log", **{PAUSE_ENV: f"{last + 2}:600"})
  c.wait_until(lambda: f"checkpoint step {last + 2} is fully written" in c.text(), "the save")
  assert c.signal(signal.SIGTERM) == EXIT_PREEMPTED, c.text()[-3000:]
  stopped = int(re.search(r"preempted: SIGTERM at step (\d+): checkpoint written", c.text())[1])
  assert f"resuming from checkpoint step {last}" in c.text()
  assert last + 2 <= stopped < STEPS
  assert _steps(ckpts)[-1] == stopped and last + 2 in _steps(ckpts)

  # 4. Restart once more: finishes.
  d = Run(run, data, tmp_path / "d.log")
  assert d.finish() == 0, d.text()[-3000:]
  assert f"resuming from checkpoint step {stopped}" in d.text()

  assert reference.finish() == 0, reference.text()[-3000:]
  got_step, got = final_params(os.path.join(run, "checkpoints"), STEPS)
  ref_step, want = final_params(os.path.join(ref, "checkpoints"), STEPS)
  assert got_step == ref_step == STEPS
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  hist = metrics_history(run)
  assert [r["step"] for r in hist] == [3, 6, 9, 12, 14]
  assert hist == metrics_history(ref)
