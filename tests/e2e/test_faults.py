"""Faults inside one process: a NaN batch (stop / skip), SIGTERM at a step that is not a
checkpoint step, a disk that refuses the write. The faults are real: an out-of-vocabulary token
(jnp.take fills it with NaN, as a corrupt record would), a real signal to this process, a real
file-size limit (RLIMIT_FSIZE) that makes the checkpoint write fail with EFBIG.

Killed processes and restarts are in test_kill_resume.py.
"""
from __future__ import annotations

import os
import resource
import signal
import threading

import jax
import numpy as np
import pytest

from conftest import load_config
from helpers import metrics_history
from medmoe_jax import sharding
from medmoe_jax.checkpoint import Checkpointer
from medmoe_jax.train import Trainer
from medmoe_jax.training import faults


def _config():
  c = load_config("post_moe")
  c.model.update(dict(num_layers=2, d_model=32, num_heads=2, num_kv_heads=1, d_ff=64))
  c.moe.layers = "last:1"
  c.data.update(dict(seq_len=32, batch_size=8))
  c.train.update(dict(steps=6, log_every=2, checkpoint_every=2, keep_checkpoints=10))
  c.mesh.data = -1
  return c


class _Faulty:
  """The real data iterator, with one fault injected when the batch of a given step is read."""

  def __init__(self, it, step, plan, vocab):
    self._it, self._step, self._plan, self._vocab = it, step, plan, vocab

  def __next__(self):
    batch = next(self._it)
    self._step += 1
    fault = self._plan.get(self._step)
    if fault == "nan":
      tokens = batch["tokens"].copy()
      r, s = np.argwhere(batch["segment_ids"] > 0)[0]
      tokens[r, s] = self._vocab  # out of vocabulary: the embedding lookup yields NaN
      batch = {**batch, "tokens": tokens}
    elif fault == "sigterm":
      os.kill(os.getpid(), signal.SIGTERM)  # as a TPU VM does before preemption
    return batch

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


class FaultyTrainer(Trainer):
  plan: dict = {}

  def initial_state(self):
    state, it = super().initial_state()
    return state, _Faulty(it, int(state.step), self.plan, self.spec.vocab_size)

  def use_workdir(self, workdir):
    """Same compiled model, new outputs (saves a re-trace per test)."""
    self.checkpointer.close()
    self.workdir = str(workdir)
    self.checkpointer = Checkpointer(os.path.join(self.workdir, "checkpoints"),
                                     keep=self.config.train.keep_checkpoints)
    return self


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
  c = _config()
  c.data.data_dir = str(tmp_path_factory.mktemp("data"))
  mesh = sharding.make_mesh(c, jax.devices()[:1])
  return FaultyTrainer(c, str(tmp_path_factory.mktemp("run")), mesh=mesh).setup()


def _restore(t, step):
  state, _, _ = t.checkpointer.restore(t.abstract_state, step)
  return jax.device_get(state)


def test_nonfinite_stops_naming_the_step_and_keeps_the_last_good_checkpoint(trainer, tmp_path):
  t = trainer.use_workdir(tmp_path)
  t.plan = {3: "nan"}
  with pytest.raises(faults.NonFiniteError) as e:
    t.run(progress=False)
  msg = str(e.value)
  assert e.value.step == 3 and e.value.last_checkpoint == 2
  assert "\n" not in msg and "step 3" in msg and "last good checkpoint is step 2" in msg, msg
  assert t.checkpointer.all_steps() == [2]
  assert [r["step"] for r in metrics_history(tmp_path)] == [2]  # step 3's window is never logged
  good = _restore(t, 2)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good.params))


def test_sigterm_checkpoints_the_current_step_and_resume_is_exact(trainer, tmp_path):
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers need the main thread")  # e.g. some pytest plugins
  ref = trainer.use_workdir(tmp_path / "ref")
  ref.plan = {}
  want = jax.device_get(ref.run(progress=False).params)
  t = trainer.use_workdir(tmp_path / "run")
  t.plan = {3: "sigterm"}  # 3 is not a checkpoint step (checkpoint_every=2)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(faults.Preempted) as e:
    t.run(progress=False)
  assert signal.getsignal(signal.SIGTERM) == before  # handlers restored after the run
  assert e.value.step == 3 and "SIGTERM at step 3" in str(e.value)
  assert t.checkpointer.all_steps() == [2, 3]
  t.plan = {}
  got = jax.device_get(t.run(progress=False).params)  # the same command again
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # Including the log window (steps 3-4) that the stop cut in two.
  assert metrics_history(tmp_path / "run") == metrics_history(tmp_path / "ref")


def test_nonfinite_skip_drops_the_update_counts_it_and_goes_on(trainer, tmp_path, capfd):
  # The policy is read by the loop, not compiled in: the same trainer serves both.
  t = trainer.use_workdir(tmp_path)
  t.set_loop(on_nonfinite="skip", checkpoint_every=1)
  t.plan = {3: "nan"}
  try:
    final = t.run(progress=False)
  finally:
    t.set_loop(on_nonfinite="stop", checkpoint_every=2)
  assert int(final.step) == 6
  assert "step 3: non-finite loss=nan" in capfd.readouterr().err
  hist = metrics_history(tmp_path)
  assert [(r["step"], r["skipped_steps"]) for r in hist] == [(2, 0), (4, 1), (6, 0)]
  assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in hist)
  s2, s3, s4 = (_restore(t, s) for s in (2, 3, 4))
  # Step 3 changed nothing but the step counter: params and Adam moments/count are step 2's.
  jax.tree.map(np.testing.assert_array_equal, s3.params, s2.params)
  jax.tree.map(np.testing.assert_array_equal, s3.opt_state, s2.opt_state)
  assert int(s3.step) == 3
  assert not np.array_equal(s4.params["embed"]["embedding"], s3.params["embed"]["embedding"])


# Orbax's background signalling thread posts to its closed asyncio loop after the failed write.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_failed_save_is_reported_and_keeps_the_previous_checkpoint(trainer, tmp_path, capfd):
  t = trainer.use_workdir(tmp_path)
  t.plan = {}
  t.run(stop_at=2, progress=False)  # compiled and checkpointed before the disk "fills up"
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))  # writes past 256 KiB fail
  try:
    with pytest.raises(faults.CheckpointSaveError) as e:
      t.run(progress=False)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  err = capfd.readouterr().err
  assert "saving step 4" in err and "File too large" in err
  assert "step 2 is the last complete checkpoint" in err
  assert "final step 6" in str(e.value) and "step 2" in str(e.value)
  assert t.checkpointer.all_steps() == [2]
  assert t.checkpointer.failed_steps == [4, 6]
  # Space again: the same command resumes from 2 and ends with every checkpoint.
  t.use_workdir(tmp_path).run(progress=False)
  assert t.checkpointer.all_steps() == [2, 4, 6]
