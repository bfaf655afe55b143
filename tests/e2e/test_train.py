"""End-to-end training on the embedded sample: loss goes down; stop + resume == uninterrupted."""
import json
import math
import os

import jax
import numpy as np
import pytest

from conftest import load_config
from helpers import metrics_history, post_moe_run_config
from medmoe_jax import sharding
from medmoe_jax.train import Trainer, cpu_allocator_hint


def _config(steps=30):
  return post_moe_run_config(steps)


def _trainer(c, workdir):
  # One device keeps the test fast; sharded equality is tested in test_model.py.
  return Trainer(c, str(workdir), mesh=sharding.make_mesh(c, jax.devices()[:1])).setup()


@pytest.fixture(scope="module")
def uninterrupted(post_moe_run):
  root, params = post_moe_run  # the shared run: _config() on one device
  return root / "run", params


def test_training_lowers_loss_and_writes_outputs(uninterrupted):
  workdir, _ = uninterrupted
  hist = metrics_history(workdir)
  assert [r["step"] for r in hist] == [5, 10, 15, 20, 25, 30]
  # Each record's lr is the one its step's update used: the schedule at step - 1 (warm-up of 1
  # step from 0, then cosine from 3e-3 to 3e-4 over 29 steps).
  cos = lambda s: 3e-4 + 0.5 * 2.7e-3 * (1 + math.cos(math.pi * (s - 1) / 29))
  for r in hist:
    assert r["lr"] == pytest.approx(cos(r["step"] - 1), rel=1e-5), r["step"]
  assert hist[-1]["loss"] < hist[0]["loss"] - 0.5
  seen = set().union(*(r["lang_loss"] for r in hist))
  assert len(seen) >= 15 and seen <= set(load_config("post_moe").languages.use)
  assert len(hist[-1]["expert_load"]) == 2          # two MoE layers
  # Hybrid-k forcing: during training every token's own family expert is in its top-2.
  assert all(rate == [1.0, 1.0] for rate in hist[-1]["own_expert_rate"].values())
  assert os.listdir(workdir / "tensorboard")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["15", "30"]
  assert json.load(open(workdir / "config.json"))["moe"]["layers"] == "last:2"


def test_resume_equals_uninterrupted(uninterrupted, tmp_path):
  ref_dir, ref_params = uninterrupted
  c = _config()
  c.data.data_dir = str(tmp_path / "data")
  t = _trainer(c, tmp_path / "run")
  t.run(stop_at=15, progress=False)
  t.close()
  # A fresh process would do exactly this: same command, new Trainer, resumes from step 15.
  t2 = _trainer(c, tmp_path / "run")
  state = t2.run(progress=False)
  t2.close()
  assert int(state.step) == 30
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), ref_params)
  assert metrics_history(tmp_path / "run") == metrics_history(ref_dir)


def test_cpu_allocator_hint_only_where_it_applies():
  assert "hugetlb=1" in cpu_allocator_hint("cpu", {}, "linux")
  assert "hugetlb=1" in cpu_allocator_hint("cpu", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                           "linux")
  assert cpu_allocator_hint("cpu", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "linux") is None
  assert cpu_allocator_hint("tpu", {}, "linux") is None
  assert cpu_allocator_hint("gpu", {}, "linux") is None
  assert cpu_allocator_hint("cpu", {}, "darwin") is None


def test_run_logs_and_trains_as_a_step_by_step_loop(uninterrupted, tmp_path):
  """The trainer keeps metrics on the device between log steps and reads each batch while the
  previous step runs; a loop that fetches every step's metrics at once (what the trainer did
  before) gives the same records and parameters, bit for bit."""
  from medmoe_jax.training.metric_window import MetricWindow
  workdir, params = uninterrupted
  c = _config()
  c.data.data_dir = str(workdir.parent / "data")
  t = _trainer(c, tmp_path / "run")
  state, iterator = t._init_state(), iter(t.dataset)
  rng = jax.random.key(int(c.seed) + 1)
  window, want = MetricWindow(t.languages), []
  for step in range(1, c.train.steps + 1):
    state, metrics = t.train_step(state, sharding.global_batch(next(iterator), t.mesh), rng)
    m = jax.device_get(metrics)
    assert m.pop("nonfinite") == 0
    window.add(m)
    if step % c.train.log_every == 0:
      want.append(dict(step=step, lr=float(t._lr(step - 1)), **window.summary()))
  t.close()
  got = metrics_history(workdir)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  assert got == json.loads(json.dumps(want))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params)
