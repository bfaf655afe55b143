"""Two real JAX processes (jax.distributed, local coordinator, 4 fake CPU devices each) train
exactly like one process with 8 devices on a different mesh, with their workdir on local disk
and in a gs:// bucket (a local GCS emulator: both processes write their parts of each checkpoint
there, and the checkpoint restores from there).

The 2-process run is the real CLI, with parameters sharded over fsdp=8 across both processes.
The reference (this pytest process, 8 fake devices) runs another layout, data=2 x expert=2 x
tensor=2, so a bug in either layout's collectives shows as a difference. Each process reads its
own shard of the data, so the reference is fed the same global batches: the
rows of shard 0 then the rows of shard 1, which is where make_array_from_process_local_data puts
each process's rows on a mesh ordered by process.
"""
import json
import os
import socket
import subprocess
import sys

import jax
from etils import epath
import numpy as np
import pytest

from conftest import REPO, load_config
from helpers import assert_tree_close
from medmoe_jax import config as cfg_lib
from medmoe_jax import distributed, sharding
from medmoe_jax.train import Trainer

STEPS = 3
OVERRIDES = dict(d_model=64, num_heads=4, num_kv_heads=2, d_ff=128)


REFERENCE_MESH = dict(data=2, fsdp=1, expert=2, tensor=2)


def _config(data_dir, mesh=None):
  c = load_config("post_moe")
  c.model.update(OVERRIDES)
  c.moe.num_experts = 8  # 7 family experts + 1, so the reference's expert axis divides them
  c.data.update(dict(seq_len=32, batch_size=8, data_dir=str(data_dir)))
  c.train.update(dict(steps=STEPS, log_every=1, checkpoint_every=STEPS, async_checkpoint=False))
  c.mesh.update(mesh or dict(data=1, fsdp=-1))  # default: parameters sharded across processes
  return c


def _flags(c):
  out = [f"--config.model.{k}={v}" for k, v in OVERRIDES.items()]
  out += [f"--config.data.{k}={c.data[k]}" for k in ("seq_len", "batch_size", "data_dir")]
  out += [f"--config.train.{k}={c.train[k]}" for k in ("steps", "log_every", "checkpoint_every",
                                                       "async_checkpoint")]
  return out + ["--config.moe.num_experts=8", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]


class _ShardsInOrder:
  """One process standing in for several: the global batch = the shards' local batches in
  process order (the data of a multi-process run, fed to a single process)."""

  def __init__(self, datasets):
    self._its = [iter(d) for d in datasets]

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(it) for it in self._its]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self):
    return {"shards": [it.get_state() for it in self._its]}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  from medmoe_jax.data import corpus
  root = tmp_path_factory.mktemp("multihost")
  c = _config(root / "data", REFERENCE_MESH)
  t = Trainer(c, str(root / "single")).setup()  # also builds the dataset the processes read
  assert dict(t.mesh.shape) == REFERENCE_MESH
  # Exactly what process i of 2 reads (Trainer.setup -> corpus.train_dataset with its shard).
  t.dataset = _ShardsInOrder([corpus.train_dataset(cfg_lib.data_spec(c, str(root / "single")), t.tokenizer, i, 2)
                              for i in range(2)])
  state = t.run(progress=False)
  t.close()
  return root, c, _losses(root / "single"), jax.device_get(state)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l)["loss"] for l in f]


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_two_processes_equal_one(reference, where, request):
  root, c, ref_losses, ref_state = reference
  bucket = request.getfixturevalue("gcs_bucket") if where == "bucket" else None  # sets os.environ
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  if where == "local":
    workdir = logdir = str(root / "two")
    checkpoints, where_flags = os.path.join(workdir, "checkpoints"), []
  else:  # gs://: checkpoints in the bucket, process 0's logs on its disk
    workdir, logdir = f"gs://{bucket}/two", str(root / "two_logs")
    checkpoints, where_flags = f"{workdir}/checkpoints", [f"--logdir={logdir}"]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "medmoe_jax.train", "--config=configs/post_moe.py",
       f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}", *where_flags, *_flags(_config(root / "data"))],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append(out)
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"

  # Only process 0 reports; metrics.jsonl (process 0's) has the single-process losses.
  assert "2 process(es)" in outs[0] and "done:" in outs[0]
  assert "done:" not in outs[1] and "segments" not in outs[1]
  np.testing.assert_allclose(_losses(logdir), ref_losses, rtol=1e-5)
  assert len(ref_losses) == STEPS

  # Both processes wrote their parts of the checkpoint, each its own data position; it restores
  # here (one process, the 2-process run's fsdp mesh) to the reference run's parameters and
  # Adam moments (which carry the gradients: a 1% gradient error moves them 1%).
  data_dir = epath.Path(checkpoints) / str(STEPS) / "data"
  assert sorted(p.name for p in data_dir.glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  t = Trainer(_config(root / "data"), logdir, checkpoint_dir=checkpoints).setup()
  state, data_state, step = t.checkpointer.restore(t.abstract_state)
  t.close()
  assert step == STEPS
  # The two layouts sum across devices in different orders, so gradients differ at ~1e-7. Adam
  # divides each update by the gradient's own size, which turns that into ~1e-6 for parameters
  # whose gradients are tiny (k_proj's bias: only RoPE keeps its gradient from vanishing). A
  # sharding or data bug moves parameters by a whole update (lr = 3e-3), far past 1e-5.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               jax.device_get(state.params), ref_state.params)
  assert_tree_close(jax.device_get(state.opt_state), ref_state.opt_state, rel=1e-4,
                    what="2 processes vs 1, opt_state")


def test_data_shard_follows_the_mesh():
  # One process holds every row: one shard. (Multi-process layouts run above.)
  c = _config("unused")
  assert distributed.data_shard(sharding.make_mesh(c), 8) == (0, 1)


@pytest.mark.parametrize("kwargs, err", [
    (dict(coordinator_address="127.0.0.1:1234"), "also pass --num_processes, --process_id"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "needs a port"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"must be in \[0"),
])
def test_bad_flags_are_named(kwargs, err):
  with pytest.raises(distributed.DistributedError, match=err):
    distributed.plan(**kwargs, env={}, tpu=False)


def test_plans():
  assert distributed.plan(env={}, tpu=False).mode == "none"
  assert distributed.plan(env={}, tpu=True).mode == "tpu"
  p = distributed.plan("10.0.0.1:8476", 4, 3, env={}, tpu=False)
  assert p.kwargs() == dict(coordinator_address="10.0.0.1:8476", num_processes=4, process_id=3)
  # SLURM, 2 nodes x 4 GPUs, one task per GPU: coordinator on the first node, one GPU per task.
  slurm = dict(SLURM_JOB_ID="4242", SLURM_NTASKS="8", SLURM_PROCID="5", SLURM_LOCALID="1",
               SLURM_STEP_NODELIST="gpu[007-008]", SLURM_STEP_NUM_NODES="2")
  p = distributed.plan(env=slurm, tpu=False)
  assert (p.mode, p.coordinator_address, p.num_processes, p.process_id, p.local_device_ids) == (
      "slurm", f"gpu007:{4242 % 4096 + 61440}", 8, 5, (1,))
  # One task per node drives all its GPUs; the port can be set.
  p = distributed.plan(env=dict(slurm, SLURM_NTASKS="2", SLURM_PROCID="1",
                                JAX_COORDINATOR_PORT="9999"), tpu=False)
  assert (p.coordinator_address, p.local_device_ids) == ("gpu007:9999", None)
  assert distributed.plan(env=dict(slurm, SLURM_NTASKS="1"), tpu=False).mode == "none"


@pytest.mark.parametrize("nodelist, first", [
    ("node001", "node001"), ("a1,b2", "a1"), ("gpu[003-010,012],login1", "gpu003"),
    ("gpu[12,3-4]", "gpu12"), ("rack[1-2]-n[07-08],x", "rack1-n07")])
def test_first_slurm_host(nodelist, first):
  assert distributed.first_slurm_host(nodelist) == first
