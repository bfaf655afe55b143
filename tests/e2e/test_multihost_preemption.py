"""Preemption of a 2-process run, with real processes and real signals (the CPU multi-process
setup of test_multihost.py: jax.distributed on a local coordinator, 4 fake devices each).

SIGTERM to one process: both agree on a step (JAX's preemption sync point), both write that
step's checkpoint and both exit 75. SIGKILL to one in the middle of a checkpoint write (every
file written, not committed; then the launcher kills the other): the last complete checkpoint is
what both restore. Rerunning both then ends with exactly the parameters and metrics history of
an uninterrupted 2-process run.

Ctrl-C (SIGINT) to one process stops both the same way. A damaged newest step (a file its
manifest lists truncated; or, with no manifest, one process's data-iterator file unreadable, so
the restore fails on that process only) is set aside once, by one process, and both resume from
the same older step; the run again ends exactly as the uninterrupted one.

The uninterrupted run is shared by both tests.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from medmoe_jax import checkpoint_integrity as integrity
from conftest import REPO
from medmoe_jax import config as cfg_lib
from medmoe_jax import upcycle
from medmoe_jax.checkpoint import PAUSE_ENV
from medmoe_jax.training.faults import EXIT_PREEMPTED
from helpers import metrics_history
from test_multihost import _config, _flags, _free_port

STEPS = 12
HANG_GUARD_S = 400  # not a timing assertion: only keeps a broken run from hanging CI


class Pair:
  """Processes 0 and 1 of one 2-process `python -m medmoe_jax.train`, output in log files."""

  def __init__(self, c, workdir, logs, **env0):
    port = _free_port()
    base = dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS="--xla_force_host_platform_device_count=4",
                JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR") or
                os.path.join(os.environ.get("TMPDIR", "/tmp"), "medmoe_jax_test_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    self.logs = [f"{logs}.p{i}.log" for i in range(2)]
    self._files = [open(p, "wb") for p in self.logs]
    self.procs = [subprocess.Popen(
        [sys.executable, "-m", "medmoe_jax.train", "--config=configs/post_moe.py",
         f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}", *_flags(c)],
        cwd=REPO, env=dict(base, **(env0 if i == 0 else {})), stdout=self._files[i],
        stderr=subprocess.STDOUT) for i in range(2)]

  def text(self, i) -> str:
    with open(self.logs[i], encoding="utf-8", errors="replace") as f:
      return f.read()

  def wait_until(self, predicate, what):
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
      if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
        self.kill()
        pytest.fail(f"before {what}: exit codes {[p.poll() for p in self.procs]}\n"
                    f"{self.text(0)[-2000:]}\n---\n{self.text(1)[-2000:]}")
      time.sleep(0.05)

  def finish(self) -> list[int]:
    try:
      codes = [p.wait(HANG_GUARD_S) for p in self.procs]
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"did not exit:\n{self.text(0)[-2000:]}\n---\n{self.text(1)[-2000:]}")
    for f in self._files:
      f.close()
    return codes

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()


def _steps(ckpts):
  return sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """(config, workdir) of an uninterrupted 2-process run."""
  root = tmp_path_factory.mktemp("preemption")
  c = _config(root / "data")  # the reference's process 0 builds the data, once
  c.train.update(dict(steps=STEPS, checkpoint_every=2, async_checkpoint=True))
  reference = Pair(c, root / "ref", root / "ref")
  assert reference.finish() == [0, 0], reference.text(0)[-3000:]
  return c, root / "ref"


def _assert_ends_as(run, ref, c):
  assert metrics_history(run) == metrics_history(ref)
  assert [r["step"] for r in metrics_history(run)] == list(range(1, STEPS + 1))
  spec = cfg_lib.model_spec(c)
  got, got_step = upcycle.load_params(str(run), upcycle.abstract_params(spec))
  want, want_step = upcycle.load_params(str(ref), upcycle.abstract_params(spec))
  assert got_step == want_step == STEPS
  flat_got, flat_want = upcycle._flat(got), upcycle._flat(want)
  assert flat_got.keys() == flat_want.keys()
  for k in flat_want:
    np.testing.assert_array_equal(np.asarray(flat_got[k]), np.asarray(flat_want[k]), err_msg=k)


def test_sigterm_and_sigkill_of_one_process_then_rerun_equals_an_uninterrupted_run(
    uninterrupted, tmp_path):
  c, ref = uninterrupted
  run = tmp_path / "run"
  ckpts = run / "checkpoints"

  # 1. SIGTERM to process 1 only, while process 0 holds the commit of step 2 open for a few
  #    seconds (so the run is certainly mid-way). Both stop at the same step, both write it.
  a = Pair(c, run, tmp_path / "a", **{PAUSE_ENV: "2:5"})
  a.wait_until(lambda: "checkpoint step 2 is fully written" in a.text(0), "the save of step 2")
  a.procs[1].send_signal(signal.SIGTERM)
  assert a.finish() == [EXIT_PREEMPTED, EXIT_PREEMPTED], a.text(0)[-3000:] + a.text(1)[-3000:]
  stops = [re.search(r"preempted: SIGTERM at step (\d+): checkpoint written", a.text(i))
           for i in range(2)]
  assert all(stops), (a.text(0)[-2000:], a.text(1)[-2000:])
  stopped = int(stops[0][1])
  assert int(stops[1][1]) == stopped and 2 <= stopped < STEPS - 2
  assert _steps(ckpts)[-1] == stopped
  assert sorted(os.listdir(ckpts / str(stopped) / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]

  # 2. Rerun; SIGKILL process 1 while the next checkpoint is fully written but not committed,
  #    then the launcher kills process 0. The half-written step is not a checkpoint.
  nxt = stopped + 2 - stopped % 2
  b = Pair(c, run, tmp_path / "b", **{PAUSE_ENV: f"{nxt}:600"})
  b.wait_until(lambda: f"checkpoint step {nxt} is fully written" in b.text(0), f"the save of {nxt}")
  b.procs[1].send_signal(signal.SIGKILL)
  b.procs[1].wait(HANG_GUARD_S)
  time.sleep(2)  # process 0 may notice first (its next collective fails): one line, exit 75
  b.procs[0].send_signal(signal.SIGKILL)
  codes = b.finish()
  assert codes[1] == -signal.SIGKILL and codes[0] in (-signal.SIGKILL, EXIT_PREEMPTED), codes
  assert "internal error" not in b.text(0), b.text(0)[-3000:]
  for i in range(2):
    assert f"resuming from checkpoint step {stopped}" in b.text(i)
  assert _steps(ckpts)[-1] == stopped
  assert [n for n in os.listdir(ckpts) if n.startswith(f"{nxt}.orbax-checkpoint-tmp")]

  # 3. Rerun both: each restores the last complete checkpoint and the run ends as the reference.
  d = Pair(c, run, tmp_path / "d")
  assert d.finish() == [0, 0], d.text(0)[-3000:] + d.text(1)[-3000:]
  for i in range(2):
    assert f"resuming from checkpoint step {stopped}" in d.text(i)
  assert not [n for n in os.listdir(ckpts) if ".orbax-checkpoint-tmp" in n]  # cleaned up
  _assert_ends_as(run, ref, c)


def _stop(pair, i, sig, name):
  """`sig` to process i: both processes stop at one step, write it, exit 75. Returns the step."""
  pair.procs[i].send_signal(sig)
  codes = pair.finish()
  assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], pair.text(0)[-3000:] + pair.text(1)[-3000:]
  stops = [re.search(rf"preempted: {name} at step (\d+): checkpoint written", pair.text(p))
           for p in range(2)]
  assert all(stops), (pair.text(0)[-2000:], pair.text(1)[-2000:])
  assert stops[0][1] == stops[1][1]
  return int(stops[0][1])


def _largest_array_file(step_dir):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


def _damaged_names(ckpts, step):
  return [n for n in os.listdir(ckpts) if n.startswith(f"{step}.damaged")]


def test_ctrl_c_then_damaged_newest_steps_fall_back_on_both_processes(uninterrupted, tmp_path):
  c, ref = uninterrupted
  run = tmp_path / "run"
  ckpts = run / "checkpoints"

  # 1. Ctrl-C (SIGINT) to process 0 while it holds the commit of step 4 open: both stop at one
  #    step, write it, exit 75, and both name the signal.
  a = Pair(c, run, tmp_path / "a", **{PAUSE_ENV: "4:5"})
  a.wait_until(lambda: "checkpoint step 4 is fully written" in a.text(0), "the save of step 4")
  first = _stop(a, 0, signal.SIGINT, "SIGINT")
  assert 4 <= first < STEPS - 2 and _steps(ckpts)[-1] == first

  # 2. A file of the newest step's parameters or optimizer state truncated (its manifest says
  #    so): process 0 names it and renames the step once; both resume from the step before.
  damaged = _largest_array_file(ckpts / str(first))
  with open(damaged, "r+b") as f:
    f.truncate(damaged.stat().st_size // 2)
  fallback = _steps(ckpts)[-2]
  nxt = fallback + 2
  b = Pair(c, run, tmp_path / "b", **{PAUSE_ENV: f"{nxt}:5"})
  b.wait_until(lambda: f"checkpoint step {nxt} is fully written" in b.text(0), f"the save of {nxt}")
  rel = damaged.relative_to(ckpts / str(first))
  assert (f"checkpoint step {first} in {ckpts} is damaged: {ckpts / str(first) / rel} is "
          f"truncated") in b.text(0)
  assert f"moved aside to {ckpts / f'{first}.damaged'}" in b.text(0)
  for i in range(2):
    assert (f"resuming from checkpoint step {fallback} in {ckpts}, the newest intact one "
            f"(damaged: {first})") in b.text(i), b.text(i)[-2000:]
  assert _damaged_names(ckpts, first) == [f"{first}.damaged"]
  second = _stop(b, 1, signal.SIGTERM, "SIGTERM")

  # 3. The newest step written without a manifest (an older version), and process 1's
  #    data-iterator file in it unreadable: only process 1's read fails, yet both fall back to
  #    the same step and the run ends exactly as the uninterrupted one.
  newest = ckpts / str(_steps(ckpts)[-1])
  assert int(newest.name) == second
  os.remove(newest / integrity.MANIFEST)
  mine = newest / "data" / "process_1-of-2.json"
  mine.write_text(mine.read_text()[:5])
  fallback = _steps(ckpts)[-2]
  d = Pair(c, run, tmp_path / "d")
  assert d.finish() == [0, 0], d.text(0)[-3000:] + d.text(1)[-3000:]
  assert (f"checkpoint step {second} in {ckpts} is damaged: {mine} is unreadable (not the JSON "
          f"written) (found by process 1); moved aside to {ckpts / f'{second}.damaged'}"
          ) in d.text(0), d.text(0)[-3000:]
  for i in range(2):
    assert (f"resuming from checkpoint step {fallback} in {ckpts}, the newest intact one "
            f"(damaged: {second})") in d.text(i), d.text(i)[-3000:]
    assert "Traceback" not in d.text(i)
  assert _damaged_names(ckpts, second) == [f"{second}.damaged"]
  _assert_ends_as(run, ref, c)
