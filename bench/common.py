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
  return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
          "backend": jax.default_backend(), "date": datetime.date.today().isoformat()}


def median_seconds(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, reps: int = 5, dtype="float32") -> float:
  """Measured peak of one large matmul in JAX on this machine (the MFU denominator on CPU)."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(reps))
  return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)
