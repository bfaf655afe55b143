"""What the experiments (expand.py, spread_out.py) share: their error, the method configs of the
source tree, the progress clock with wall and CPU time per phase, a run's metrics, and the
settings file that pins a workdir to one experiment."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
import time

from medmoe_jax.errors import InputError  # a ValueError the CLIs report in one line

# --quick is compile-bound (ten programs, a few steps each): cheaper LLVM passes (the test suite's
# flags) cut its compile time by about a third. Only where JAX has not started yet.
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


class ExperimentError(InputError):
  """Bad settings or a workdir that holds another experiment; the message says what to do."""


def quick_xla_flags() -> None:
  """QUICK_XLA_FLAGS into XLA_FLAGS, where JAX has not started and no level is set."""
  if "jax" not in sys.modules and "xla_backend_optimization_level" not in \
      os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + QUICK_XLA_FLAGS).strip()


def load_config(name: str, arg=None):
  """configs/<name>.py of this source tree, loaded the way --config loads it."""
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / f"{name}.py"
  if not path.is_file():
    raise ExperimentError(f"{path} not found: the experiment builds on the method configs of a "
                          "source checkout; run it from the repository")
  spec = importlib.util.spec_from_file_location(f"medmoe_expand_cfg_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def cpu_seconds() -> float:
  """User + sys CPU seconds of this process (every thread) and of its finished children (the
  spread-out process, once waited for)."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


class Clock:
  """Progress lines ("[expand +12s] phase: ...") and the wall and CPU time of every phase."""

  def __init__(self, stream=sys.stdout):
    self.t0 = time.time()
    self.cpu0 = cpu_seconds()
    self.phases: dict[str, float] = {}
    self.phases_cpu: dict[str, float] = {}
    self.stream = stream

  def cpu(self) -> float:
    """CPU seconds (user + sys, every thread) this process has spent since the clock started: on
    a shared machine, CPU time / cores is what an idle machine's wall time would be."""
    return cpu_seconds() - self.cpu0

  def log(self, msg: str) -> None:
    print(f"[expand +{time.time() - self.t0:.0f}s] {msg}", file=self.stream, flush=True)

  def phase(self, name: str):
    clock = self

    class _Phase:
      def __enter__(self):
        self.start, self.cpu_start = time.time(), cpu_seconds()
        clock.log(f"{name}: start")
        return self

      def __exit__(self, *exc):
        dt, cpu = time.time() - self.start, cpu_seconds() - self.cpu_start
        clock.phases[name] = dt
        clock.phases_cpu[name] = cpu
        if exc[0] is None:
          clock.log(f"{name}: done in {dt:.0f}s ({cpu:.0f} CPU s)")
        return False

    return _Phase()


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def loss_summary(hist: list[dict]) -> dict:
  """First/last logged loss, tokens trained, and the loss change over the last 20% of the steps
  (how settled the run is)."""
  last = hist[-1]
  cut = last["step"] * 0.8
  earlier = [r for r in hist if r["step"] <= cut] or hist[:1]
  ref = earlier[-1]["loss"]
  return {"loss_first": hist[0]["loss"], "loss_last": last["loss"],
          "loss_change_last_20pct": last["loss"] / ref - 1.0 if ref else None,
          "tokens": float(sum(r.get("tokens", 0.0) for r in hist)),
          "lang_loss_last": last.get("lang_loss", {})}


def pin_settings(settings, out: str, what: str) -> None:
  """OUT/settings.json: a rerun with the same settings resumes; other settings are refused."""
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "settings.json")
  mine = json.loads(json.dumps(dataclasses.asdict(settings)))  # tuples -> lists, as read back
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      theirs = json.load(f)
    if theirs != mine:
      diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
      raise ExperimentError(f"{out} holds {what} with other settings ({', '.join(diff)}); "
                            "choose an empty --workdir or repeat that experiment's flags")
  else:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(mine, f, indent=2)
