"""8 fake CPU devices for multi-device tests; set before JAX initialises.

Tests live in tests/unit/ (fast, mirroring the package) and tests/e2e/ (real processes, training
runs, CLIs: everything collected there is marked `e2e`). The fast loop is
`python -m pytest -q -m "not e2e" -n 2` (two pytest-xdist workers); the full suite is
`python -m pytest -q`. This file, helpers.py and method_runs.py are importable from both
(`from conftest import load_config`).
"""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags += " --xla_force_host_platform_device_count=8"
# Tests are compile-bound on CPU (tiny shapes, many programs): cheaper LLVM passes cut the suite's
# compile time by about a third. Every comparison runs under the same flags on both sides.
if "xla_backend_optimization_level" not in flags:
  flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# XLA's newer CPU fusion emitters (through MLIR) compile these small programs about 2.5x slower
# than its elemental ones: the suite's compiles run on the elemental emitters.
if "xla_cpu_use_fusion_emitters" not in flags:
  flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = flags.strip()
# Read when gcsfs is imported: without it gcsfs asks the (absent) Storage Control API about each
# bucket's layout, and waits a minute for the answer. Tests reach only the local emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:  # helpers.py, method_runs.py from tests/unit/** and tests/e2e/
  sys.path.insert(0, str(TESTS))


def load_config(name: str, arg=None):
  """Load configs/<name>.py the way --config does."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.fixture
def tiny_config():
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=512, d_model=64, num_layers=4, num_heads=4, num_kv_heads=2, d_ff=128))
  c.data.seq_len = 32
  c.data.batch_size = 8
  return c


def pytest_configure(config):
  # Identical computations (same config, new Trainer) compile once per pytest run.
  import tempfile

  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "medmoe_jax_test_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
  """Everything under tests/e2e/ is an end-to-end test."""
  e2e = TESTS / "e2e"
  for item in items:
    if e2e in pathlib.Path(str(item.path)).parents:
      item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def gcs_bucket(tmp_path_factory):
  """The name of a bucket in a local GCS emulator (tests/gcs_emulator.py) that gcsfs, etils and
  TensorStore in this process, and the processes it starts, reach while the module runs."""
  pytest.importorskip("gcsfs")
  pytest.importorskip("gcp_storage_emulator")
  import gcs_emulator
  bucket = "medmoe"
  with gcs_emulator.serve(bucket, tmp_path_factory.mktemp("gcs") / "emulator.log") as env:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      yield bucket
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


@pytest.fixture(scope="session")
def post_moe_run(tmp_path_factory):
  """(root, final params): helpers.post_moe_run_config's 30 steps on one device, checkpoints at
  15 and 30 in root/run, its data in root/data. Trained once for every test that reads a finished
  run (training outputs, resume, evaluation)."""
  import jax

  from helpers import post_moe_run_config
  from medmoe_jax import sharding
  from medmoe_jax.train import Trainer
  root = tmp_path_factory.mktemp("post_moe_run")
  c = post_moe_run_config()
  c.data.data_dir = str(root / "data")
  t = Trainer(c, str(root / "run"), mesh=sharding.make_mesh(c, jax.devices()[:1])).setup()
  state = t.run(progress=False)
  t.close()
  return root, jax.device_get(state.params)
