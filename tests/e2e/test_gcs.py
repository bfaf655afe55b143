"""gs:// buckets against a real local GCS emulator (`gcp-storage-emulator`, with the object
generations TensorStore needs added by tests/gcs_emulator.py; started here as its own process; no
internet), reached by gcsfs through STORAGE_EMULATOR_HOST and by TensorStore (Orbax's arrays)
through TENSORSTORE_GCS_HTTP_URL.

- A run that reads its corpus and tokenizer from the bucket and builds its dataset there, is
  killed (SIGKILL) and resumes on a machine with an empty local cache (another worker: it reads
  the build from the bucket instead of building it again) ends as a run that was never
  interrupted, on local disk.
- A run whose workdir is in the bucket (checkpoints, data-iterator state and built dataset there),
  killed while a checkpoint is half written and started again, resumes from the bucket's last
  committed step and ends as the uninterrupted run: same parameters, same metrics.
"""
from __future__ import annotations

import os
import shutil
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
from medmoe_jax.data import specs, tokenizer

LANGS = ("de", "en", "es", "fr")
STEPS = 6
ARGS = [*tiny_train_flags(STEPS), "--config.languages.use=" + repr(LANGS)]
HANG_GUARD_S = 900  # not a timing assertion: only keeps a broken run from hanging CI


def _fs():
  import fsspec
  return fsspec.filesystem("gs")


def _env(cache, **extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a single-host run
  # The compiled steps come from the compilation cache shared with the pytest run.
  env.update(JAX_PLATFORMS="cpu", MEDMOE_JAX_CACHE=str(cache),
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "medmoe_jax_test_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.update(extra)
  return env


def _train(workdir, sources, *extra, log, cache, **env):
  out = open(log, "wb")
  proc = subprocess.Popen(
      [sys.executable, "-m", "medmoe_jax.train", *ARGS, f"--config.data.sources={sources}",
       f"--workdir={workdir}", *extra], cwd=REPO, env=_env(cache, **env), stdout=out,
      stderr=subprocess.STDOUT)
  proc.log, proc.out = log, out
  return proc


def _text(proc) -> str:
  with open(proc.log, encoding="utf-8", errors="replace") as f:
    return f.read()


def _finish(proc) -> int:
  try:
    rc = proc.wait(HANG_GUARD_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail(f"process did not exit:\n{_text(proc)[-3000:]}")
  proc.out.close()
  return rc


def test_emulator_keeps_object_generations_as_gcs_does(gcs_bucket):
  """What the checkpoint test rests on: TensorStore's compare-and-swap against the emulator."""
  import tensorstore as ts
  store = ts.KvStore.open({"driver": "gcs", "bucket": gcs_bucket, "path": "cas/"}).result()
  absent = store.read("k").result()
  assert absent.state == "missing"
  first = store.write("k", b"1", if_equal=absent.stamp.generation).result().generation
  assert first  # written only if absent (ifGenerationMatch=0), with a real generation
  assert not store.write("k", b"x", if_equal=absent.stamp.generation).result().generation
  second = store.write("k", b"2", if_equal=first).result().generation
  assert second and second != first
  assert not store.write("k", b"3", if_equal=first).result().generation  # stale: refused
  read = store.read("k").result()
  assert (read.value, read.stamp.generation) == (b"2", second)  # x-goog-generation on the read
  assert store.read("k", if_not_equal=second).result().state == "unspecified"  # 304
  assert store.read("k", if_not_equal=first).result().value == b"2"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(local corpus directory, finished uninterrupted run): everything on local disk."""
  root = tmp_path_factory.mktemp("reference")
  corpus = root / "corpus"  # the source is named after its directory: "corpus" in the bucket too
  corpus.mkdir()
  for lang in LANGS:
    shutil.copy(specs.SAMPLE_TEXT_DIR / f"{lang}.jsonl", corpus)
  run = _train(root / "run", f"{corpus}/*.jsonl", log=root / "run.log", cache=root / "cache")
  assert _finish(run) == 0, _text(run)[-3000:]
  return corpus, root / "run"


def _kill_while_saving(proc, step: int):
  """SIGKILL `proc` once checkpoint `step` is written but not committed (PAUSE_ENV holds it)."""
  deadline = time.monotonic() + HANG_GUARD_S
  while f"checkpoint step {step} is fully written" not in _text(proc):
    assert proc.poll() is None, _text(proc)[-3000:]
    assert time.monotonic() < deadline, _text(proc)[-3000:]
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  assert _finish(proc) == -signal.SIGKILL


def _assert_same_run(checkpoints, logdir, reference_run):
  got_step, got = final_params(checkpoints, STEPS)
  ref_step, want = final_params(reference_run / "checkpoints", STEPS)
  assert got_step == ref_step == STEPS
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  hist = metrics_history(logdir)
  assert [r["step"] for r in hist] == [3, 6]
  assert hist == metrics_history(reference_run)


def test_corpus_and_dataset_in_a_bucket_resume_as_one_run(gcs_bucket, reference, tmp_path):
  local_corpus, reference_run = reference
  fs = _fs()
  for src in sorted(local_corpus.iterdir()):
    fs.put_file(str(src), f"{gcs_bucket}/corpus/{src.name}")
  fs.put_file(str(tokenizer.SAMPLE_MODEL_PATH), f"{gcs_bucket}/tokenizer/tokenizer.model")
  data = f"gs://{gcs_bucket}/data"
  run = tmp_path / "run"
  from_bucket = (f"gs://{gcs_bucket}/corpus/*.jsonl", f"--config.data.data_dir={data}",
                 f"--config.data.tokenizer=gs://{gcs_bucket}/tokenizer")

  # 1. Corpus read from the bucket, dataset built and uploaded there; killed while the save of
  #    step 4 is held open (step 2 committed, 4 written but not committed).
  a = _train(run, *from_bucket, log=tmp_path / "a.log", cache=tmp_path / "cache_a",
             **{PAUSE_ENV: "4:600"})
  _kill_while_saving(a, 4)
  text_a = _text(a)
  assert "building source 'corpus'" in text_a
  assert f"uploading source 'corpus' to {data}/corpus" in text_a
  built = fs.find(f"{gcs_bucket}/data/corpus")
  assert any(".array_record-" in p for p in built) and any(p.endswith("/metadata.json") for p in built)

  # 2. Restart the same command on a machine with an empty cache (another worker): it reads the
  #    build from the bucket instead of building it, resumes from step 2 and finishes.
  b = _train(run, *from_bucket, log=tmp_path / "b.log", cache=tmp_path / "cache_b")
  assert _finish(b) == 0, _text(b)[-3000:]
  text_b = _text(b)
  assert "resuming from checkpoint step 2" in text_b, text_b[-3000:]
  assert "building source" not in text_b and "uploading source" not in text_b
  assert any(".array_record-" in f for _, _, files in os.walk(tmp_path / "cache_b") for f in files)

  _assert_same_run(run / "checkpoints", run, reference_run)


def test_checkpoints_in_a_bucket_resume_as_one_run(gcs_bucket, reference, tmp_path):
  local_corpus, reference_run = reference
  fs = _fs()
  workdir = f"gs://{gcs_bucket}/ckpt_run"
  logdir = tmp_path / "logs"  # process 0's disk; the same directory for both attempts
  cmd = (workdir, f"{local_corpus}/*.jsonl", f"--logdir={logdir}")

  # 1. Killed while the save of step 4 is held open: step 2 is committed in the bucket, step 4's
  #    arrays and data-iterator state are written there but not committed.
  a = _train(*cmd, log=tmp_path / "a.log", cache=tmp_path / "cache_a", **{PAUSE_ENV: "4:600"})
  _kill_while_saving(a, 4)
  saved = fs.find(f"{gcs_bucket}/ckpt_run/checkpoints")
  assert any("/2/state/" in p for p in saved) and any("/4" in p for p in saved), saved[:20]
  assert any("/2/data/" in p for p in saved), saved[:20]
  assert fs.find(f"{gcs_bucket}/ckpt_run/data/corpus")  # the built dataset went to <workdir>/data

  # 2. The same command again (a preempted job restarting): it resumes from the bucket's step 2,
  #    not the uncommitted 4, and ends as the uninterrupted run.
  b = _train(*cmd, log=tmp_path / "b.log", cache=tmp_path / "cache_b")
  assert _finish(b) == 0, _text(b)[-3000:]
  assert "resuming from checkpoint step 2" in _text(b), _text(b)[-3000:]
  _assert_same_run(f"{workdir}/checkpoints", logdir, reference_run)
