"""Shared benchmark helpers: timing, machine info, FLOP conventions."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time


def machine_info() -> dict:
  cpu = platform.processor()
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    cpu = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), cpu)
  except OSError:
    pass
  import jax
  # The 1-minute load average: on a shared machine, other jobs' load skews wall-clock numbers.
  return {"cpu": cpu, "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
          "jax": jax.__version__,
          "backend": jax.default_backend(), "date": datetime.date.today().isoformat(),
          "allocator": allocator_env()}


# glibc malloc settings read at process start; they change what fresh memory costs XLA:CPU
# (bench/malloc_ab.py), so every benchmark records them.
ALLOCATOR_VARS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_",
                  "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def allocator_env() -> dict:
  return {k: os.environ[k] for k in ALLOCATOR_VARS if k in os.environ}


# The clock every timing here uses: wall time by default; `use_clock("cpu")` switches to this
# process's CPU time, which with one compute thread is what the work costs whatever else runs on
# a shared machine (a second job on the same cores inflates wall time, not CPU time).
_CLOCK = [time.perf_counter]


def use_clock(name: str) -> None:
  _CLOCK[0] = {"wall": time.perf_counter, "cpu": time.process_time}[name]


def single_thread_env() -> None:
  """Hold XLA to one thread; call before jax is imported (torch: torch.set_num_threads(1))."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def seconds(fn) -> float:
  """Time of one call of fn on the current clock (fn must block until its work is done)."""
  t = _CLOCK[0]()
  fn()
  return _CLOCK[0]() - t


def median_seconds(fn, reps: int) -> float:
  return statistics.median(seconds(fn) for _ in range(reps))


def best_seconds(fn, reps: int) -> float:
  return min(seconds(fn) for _ in range(reps))


# One compiled matmul per (n, dtype): the peak is re-measured every repetition, not recompiled.
_MATMULS: dict = {}


def matmul_peak_gflops(n: int = 2048, reps: int = 5, dtype="float32") -> float:
  """Measured peak of one large matmul in JAX on this machine (the MFU denominator on CPU)."""
  import jax
  import jax.numpy as jnp
  if (n, dtype) not in _MATMULS:
    f = jax.jit(lambda x, y: x @ y)
    a, b = jnp.ones((n, n), dtype), jnp.ones((n, n), dtype)
    f(a, b).block_until_ready()
    _MATMULS[(n, dtype)] = lambda: f(a, b).block_until_ready()
  return 2 * n ** 3 / best_seconds(_MATMULS[(n, dtype)], reps) / 1e9


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def random_batch(batch: int, seq: int, vocab_size: int, num_languages: int = 20) -> dict:
  """A packed-looking batch of random tokens on the default device: one document a row, one
  language a row (the shape every train-step benchmark feeds)."""
  import jax.numpy as jnp
  import numpy as np
  r = np.random.RandomState(0)
  b = dict(tokens=r.randint(4, vocab_size, (batch, seq)).astype(np.int32),
           segment_ids=np.ones((batch, seq), np.int32),
           positions=np.tile(np.arange(seq, dtype=np.int32), (batch, 1)),
           lang_ids=r.randint(0, num_languages, (batch, 1)).repeat(seq, 1).astype(np.int32),
           loss_mask=np.ones((batch, seq), np.int32))
  return {k: jnp.asarray(v) for k, v in b.items()}
