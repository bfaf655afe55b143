"""Metrics: one JSON object per logged step in metrics.jsonl, plus TensorBoard scalars.
Only process 0 writes."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from medmoe_jax.fileio import write_atomic


def _scalarize(metrics: dict, prefix="") -> dict:
  """Flatten nested dicts / small arrays into scalar entries (expert_load/layer0/e3, ...)."""
  out = {}
  for k, v in metrics.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_scalarize(v, name + "/"))
    else:
      a = np.asarray(v)
      if a.ndim == 0:
        out[name] = float(a)
  return out


def _summary_writer_cls():
  """tensorboardX's writer module imports torch when it is installed (only to accept torch
  tensors), which adds seconds to every training start. Hide torch during that one import unless
  it is already loaded; later `import torch` works as usual."""
  import sys
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter
  finally:
    if "torch" in sys.modules and sys.modules["torch"] is None:
      del sys.modules["torch"]
  return SummaryWriter


class MetricsWriter:

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      self._tb = _summary_writer_cls()(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, record: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **record}
    self._jsonl.write(json.dumps(record, ensure_ascii=False, default=float) + "\n")
    self._jsonl.flush()
    for name, value in _scalarize(record).items():
      if name != "step":
        self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def truncate_after(workdir: str, step: int) -> None:
  """On resume from `step`, drop records logged after it so the history matches a run that was
  never interrupted."""
  path = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [l for l in f if _complete(l) and json.loads(l).get("step", 0) <= step]
  # Atomic: a process killed right here must not lose the history it is trimming.
  write_atomic(path, "".join(lines))


def _complete(line: str) -> bool:
  """False for the torn last line a SIGKILL during a write can leave."""
  if not line.endswith("\n"):
    return False
  try:
    json.loads(line)
  except json.JSONDecodeError:
    return False
  return True
