"""`python -m medmoe_jax.train` keeps XLA's persistent compilation cache: in the workdir by
default, or where --compilation_cache says; a second run with the same programs compiles
nothing new (every program it needs is read from the cache)."""
import os
import subprocess
import sys

from conftest import REPO

ARGS = ["--config=configs/post_moe.py", "--config.model.num_layers=2",
        "--config.moe.layers=last:1", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.model.num_kv_heads=1", "--config.model.d_ff=64", "--config.data.seq_len=32",
        "--config.data.batch_size=4", "--config.train.steps=2", "--config.mesh.data=1"]


def _train(workdir, data_dir, *extra):
  # Every program cached, however fast it compiled (the default threshold is 1 s, which a
  # loaded machine may cross one run and not the next).
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  subprocess.run([sys.executable, "-m", "medmoe_jax.train", *ARGS, f"--workdir={workdir}",
                  f"--config.data.data_dir={data_dir}", *extra], cwd=REPO, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


def _entries(cache):
  return sorted(n for n in os.listdir(cache) if not n.startswith("."))


def test_second_run_reads_every_program_from_the_cache(tmp_path):
  first = tmp_path / "first"
  _train(first, tmp_path / "data")
  cache = first / "compilation_cache"
  entries = _entries(cache)
  assert entries  # the train step (and the initialiser) were written
  # Another run of the same programs, pointed at that cache: it adds nothing to it.
  _train(tmp_path / "second", tmp_path / "data", f"--compilation_cache={cache}")
  assert _entries(cache) == entries
  assert not (tmp_path / "second" / "compilation_cache").exists()
