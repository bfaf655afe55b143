"""Damaged checkpoints: each kind of file a step has (parameters, optimizer state, data-iterator
state, metadata, the manifest) truncated, removed, changed by one byte or made unreadable
(a directory in its place; a real EACCES is tested in test_cli_errors.py). The damaged newest step
is named in one line with its file, moved aside (never deleted), and the run resumes from the
newest intact step and ends exactly as a run that was never damaged.

One trainer (one compile) serves every case: a run to step 4 (checkpoints 2 and 4) is copied per
case, step 4 is damaged, and the same trainer resumes on the copy.
"""
from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

from medmoe_jax import checkpoint_integrity as integrity
from medmoe_jax import sharding
from medmoe_jax.checkpoint import Checkpointer, DamagedCheckpointError
from medmoe_jax.train import Trainer
from helpers import metrics_history
from test_faults import _config  # the same tiny run (6 steps, checkpoints every 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(trainer, workdir holding checkpoints 2 and 4 of a run stopped at 4, reference workdir and
  final params of the uninterrupted run)."""
  c = _config()
  root = tmp_path_factory.mktemp("damage")
  c.data.data_dir = str(root / "data")
  mesh = sharding.make_mesh(c, jax.devices()[:1])
  t = Trainer(c, str(root / "ref"), mesh=mesh).setup()
  want = jax.device_get(t.run(progress=False).params)
  t.close()
  t.workdir = str(root / "base")
  t.open_checkpointer()
  t.run(stop_at=4, progress=False)
  t.close()
  return t, root / "base", root / "ref", want


def _array_file(step_dir, key):
  """The OCDBT data file (relative to the step) that holds array `key`'s first chunk."""
  import tensorstore as ts
  base = ts.KvStore.open({"driver": "file", "path": f"{step_dir}/state/ocdbt.process_0/"}).result()
  root = ts.ocdbt.dump(base).result()["versions"][-1]["root"]["location"]
  for entry in ts.ocdbt.dump(base, root).result()["entries"]:
    if entry["key"] == f"{key}/0.0".encode() and "indirect_value" in entry:
      return "state/ocdbt.process_0/" + entry["indirect_value"].split("::")[1].split(":")[0]
  raise AssertionError(f"{key} is not stored indirectly in {step_dir}")


PARAMS = "params.embed.embedding"
ADAM_MU = "opt_state.inner_states.trainable.inner_state.2.0.mu.embed.embedding"


def _damage(path, how):
  if how == "truncate":
    with open(path, "r+b") as f:
      f.truncate(max(1, os.path.getsize(path) // 2))
  elif how == "remove":
    os.remove(path)
  elif how == "directory":  # there, but cannot be read (as root, mode 000 would still read)
    os.remove(path)
    os.mkdir(path)
  elif how == "flip":  # one changed byte, same size
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      b = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([b[0] ^ 0x5A]))
  else:
    raise ValueError(how)


CASES = {
    # kind of file: (which file of step 4, damage, expected reason)
    "parameters": (PARAMS, "truncate", "is truncated"),
    "parameters, unreadable": (PARAMS, "directory", "is unreadable (Is a directory)"),
    "optimizer state": (ADAM_MU, "flip", "has changed contents"),
    "data-iterator state": ("data/process_0-of-1.json", "remove", "is missing"),
    "array metadata": ("state/_METADATA", "flip", "has changed contents"),
    "step metadata": ("_CHECKPOINT_METADATA", "truncate", "is not the JSON that was written"),
    "manifest": (integrity.MANIFEST, "truncate", "is unreadable"),
}


def _resume_damaged(runs, tmp_path, damage, capfd):
  """Copy the step-4 run, damage step 4, resume with the shared trainer. Returns the workdir."""
  t, base, _, _ = runs
  capfd.readouterr()  # what came before is not this case's output
  work = tmp_path / "run"
  shutil.copytree(base, work)
  damage(work / "checkpoints" / "4")
  t.workdir = str(work)
  t.open_checkpointer()
  return t, work


def _assert_ends_as_uninterrupted(runs, t, work):
  _, _, ref, want = runs
  got = jax.device_get(t.run(progress=False).params)
  t.close()
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert metrics_history(work) == metrics_history(ref)


@pytest.mark.parametrize("kind", list(CASES))
def test_damaged_newest_step_is_moved_aside_and_the_run_resumes_exactly(runs, tmp_path, capfd, kind):
  which, how, reason = CASES[kind]
  step_dir = runs[1] / "checkpoints" / "4"
  rel = _array_file(step_dir, which) if which in (PARAMS, ADAM_MU) else which
  t, work = _resume_damaged(runs, tmp_path, lambda d: _damage(d / rel, how), capfd)
  err = capfd.readouterr().err.strip().splitlines()
  ckpts = work / "checkpoints"
  assert len(err) == 1, err
  assert err[0].startswith(f"checkpoint step 4 in {ckpts} is damaged: {ckpts / '4' / rel} {reason}")
  assert err[0].endswith(f"; moved aside to {ckpts / '4.damaged'}"), err
  assert sorted(os.listdir(ckpts)) == ["2", "4.damaged"]
  assert t.checkpointer.latest_step() == 2
  _assert_ends_as_uninterrupted(runs, t, work)
  out = capfd.readouterr().out
  assert f"resuming from checkpoint step 2 in {ckpts}, the newest intact one (damaged: 4)" in out
  assert (ckpts / "4.damaged" / rel).exists() or how == "remove"  # kept for the user


def test_step_without_manifest_that_cannot_be_read_falls_back_too(runs, tmp_path, capfd):
  # A step written before manifests existed: the restore's own read error marks it damaged.
  def damage(d):
    rel = _array_file(d, PARAMS)
    os.remove(d / integrity.MANIFEST)
    _damage(d / rel, "truncate")
  t, work = _resume_damaged(runs, tmp_path, damage, capfd)
  assert t.checkpointer.latest_step() == 4  # nothing to check it against before reading it
  _assert_ends_as_uninterrupted(runs, t, work)
  err = capfd.readouterr().err
  assert f"checkpoint step 4 in {work / 'checkpoints'} is damaged: it could not be read (" in err
  assert "Traceback" not in err
  assert (work / "checkpoints" / "4.damaged").is_dir()


def test_every_step_damaged_is_one_line_and_nothing_is_truncated(runs, tmp_path, capfd):
  # Found when the checkpoints are opened (before the data build and the compile); starting
  # over is the user's decision, so metrics.jsonl keeps its history.
  def damage(d):
    for s in ("2", "4"):
      _damage(d.parent / s / "data" / "process_0-of-1.json", "remove")
  with pytest.raises(DamagedCheckpointError, match=r"no intact checkpoint in .*: every step is "
                     r"damaged \(2, 4; see above\)") as e:
    _resume_damaged(runs, tmp_path, damage, capfd)
  work = tmp_path / "run"
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(work / "checkpoints")) == ["2.damaged", "4.damaged"]
  assert [r["step"] for r in metrics_history(work)] == [2, 4]
  assert capfd.readouterr().err.count("is damaged") == 2


def test_read_only_reader_skips_a_damaged_step_and_a_named_one_fails(runs, tmp_path, capfd):
  # Evaluation beside a training run: it never renames; the latest intact step is used, and a
  # step asked for by number that is damaged is an error naming its file.
  t, base, _, _ = runs
  capfd.readouterr()
  work = tmp_path / "copy"
  shutil.copytree(base, work)
  _damage(work / "checkpoints" / "4" / "state" / "_METADATA", "truncate")
  target = jax.tree.map(lambda x: x, t.abstract_state.params)
  ck = Checkpointer(str(work / "checkpoints"), read_only=True)
  params, step = ck.restore_params(target)
  assert step == 2
  err = capfd.readouterr().err
  assert f"checkpoint step 4 in {work / 'checkpoints'} is damaged: " in err
  assert "left in place (read-only)" in err and "the newest intact one" in err
  assert sorted(os.listdir(work / "checkpoints")) == ["2", "4"]
  ck.close()
  ck = Checkpointer(str(work / "checkpoints"), read_only=True)
  with pytest.raises(DamagedCheckpointError, match=r"checkpoint step 4 .* is damaged: .*_METADATA "
                     r"is truncated"):
    ck.restore_params(target, 4)
  ck.close()


def test_upcycle_source_with_a_damaged_newest_step_uses_the_newest_intact_one(runs, tmp_path, capfd):
  # config.upcycle.from (and hf export) read another run's checkpoint: skip, never rename.
  from medmoe_jax import upcycle
  t, base, _, _ = runs
  capfd.readouterr()
  work = tmp_path / "source"
  shutil.copytree(base, work)
  rel = _array_file(work / "checkpoints" / "4", PARAMS)
  _damage(work / "checkpoints" / "4" / rel, "flip")
  params, step = upcycle.load_params(str(work), upcycle.abstract_params(t.spec))
  assert step == 2
  out, err = capfd.readouterr()
  assert err.strip() == (f"checkpoint step 4 in {work / 'checkpoints'} is damaged: "
                         f"{work / 'checkpoints' / '4' / rel} has changed contents (sha256 "
                         "differs from the one written with it); left in place (read-only)")
  assert f"using checkpoint step 2 in {work / 'checkpoints'}, the newest intact one" in out
  ck = Checkpointer(str(work / "checkpoints"), read_only=True)
  want, _ = ck.restore_params(jax.tree.map(lambda x: x, t.abstract_state.params), 2)
  ck.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(want))
  with pytest.raises(DamagedCheckpointError, match=rf"checkpoint step 4 at .*/4 is damaged: .*{rel} "
                     r"has changed contents"):
    upcycle.load_params(str(work / "checkpoints" / "4"), upcycle.abstract_params(t.spec))
