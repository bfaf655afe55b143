"""The evaluation of a run's checkpoints: the Evaluator runs the selected tasks (evaluation/tasks:
multiple choice, held-out perplexity, routing, forgetting) on each checkpoint and writes them into
one output directory. `python -m medmoe_jax.eval` (medmoe_jax/eval.py, which says what it writes)
calls `run`."""
from __future__ import annotations

import datetime
import json
import os
import time

import jax
from tqdm import tqdm

from medmoe_jax import config as cfg_lib
from medmoe_jax import log
from medmoe_jax.checkpoint import read_run_config
from medmoe_jax.checkpoint_integrity import DamagedCheckpointError
from medmoe_jax.errors import ConfigError
from medmoe_jax.evaluation import report, tasks
from medmoe_jax.evaluation.lm import LanguageModel, checkpoint_steps, resolve_checkpoint
from medmoe_jax.evaluation.tasks.base import ModelRun
from medmoe_jax.evaluation.tasks.mcq import mcq_files  # noqa: F401 (re-exported by eval.py)

_log = log.get(__name__)


def validate(c) -> None:
  """Raise ConfigError naming the key and the fix. Cheap: no files read, no compute."""
  tasks.resolve(c)


class Evaluator:
  """Composes the evaluation of one run's checkpoints into one output directory."""

  def __init__(self, config, workdir: str, mesh=None):
    self.spec = tasks.resolve(config)  # the eval config (configs/eval.py), validated and frozen
    self.out = os.path.abspath(workdir)
    self.mesh = mesh
    self.main = jax.process_index() == 0
    self.run_dir, self.path_step = resolve_checkpoint(self.spec.checkpoint)
    self.tasks = tasks.select(self.spec)
    self._cache: dict = {}

  # --- What the tasks share (tasks/base.py: ModelRun.ev).

  def once(self, key: str, compute):
    """compute() the first time any task asks for `key` in this evaluation (the held-out
    split), its value after that."""
    if key not in self._cache:
      self._cache[key] = compute()
    return self._cache[key]

  def load(self, checkpoint, step) -> LanguageModel:
    return LanguageModel.load(checkpoint, step=step, mesh=self.mesh, mesh_config=self.spec.mesh,
                              batch_size=self.spec.batch_size,
                              overrides=dict(self.spec.overrides))

  def bar(self, total, desc):
    return tqdm(total=total, desc=desc, disable=not (self.spec.progress and self.main),
                dynamic_ncols=True, leave=False)

  def write_predictions(self, directory, name, records):
    if directory is None or not self.main:
      return
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")

  # --- One model, one step.

  def evaluate_model(self, lm, *, baseline: bool = False, results: dict | None = None,
                     ppl_languages=None, predictions_dir=None) -> dict:
    """The selected tasks (baseline: those that run on the forgetting baseline) on one loaded
    model -> their merged results."""
    todo = [t for t in self.tasks if t.on_baseline or not baseline]
    m = ModelRun(self, lm, frozenset(t.name for t in todo), results=results,
                 ppl_languages=ppl_languages, predictions_dir=predictions_dir)
    for task in todo:
      m.entry.update(task.evaluate(m))
    return m.entry

  def evaluate_step(self, results: dict, step: int | None) -> dict:
    t0 = time.time()
    lm = self.load(self.run_dir, step)
    if self.main:
      _log.info(f"evaluating {self.run_dir} step {lm.step} on mesh {dict(lm.mesh.shape)}")
    entry = {"step": lm.step,
             "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}, mesh "
                        f"{dict(lm.mesh.shape)}",
             "batch_size": lm.batch_size}
    entry.update(self.evaluate_model(
        lm, results=results, predictions_dir=os.path.join(self.out, "predictions",
                                                          f"step_{lm.step}")))
    entry["seconds"] = time.time() - t0
    figs = {}
    if self.main:
      fig_dir = os.path.join(self.out, "figures")
      os.makedirs(fig_dir, exist_ok=True)
      for task in self.tasks:
        figs.update(task.figures(entry, fig_dir, lm.step))
    entry["figures"] = {k: os.path.relpath(v, self.out) for k, v in figs.items()}
    return entry

  # --- Outputs, steps.

  def _record(self, results, entry):
    """Adds (or replaces) the step's entry, writes results.json and report.md (which shows this,
    the latest evaluation, whose figures are in figures/, plus the history of all steps)."""
    evals = [e for e in results["evaluations"] if e["step"] != entry["step"]] + [entry]
    results["evaluations"] = sorted(evals, key=lambda e: e["step"])
    if not self.main:
      return
    hist = report.history_figure(results["evaluations"],
                                 os.path.join(self.out, "figures", "history.png"))
    if hist:
      entry["figures"]["history"] = os.path.relpath(hist, self.out)
    report.write_json(os.path.join(self.out, "results.json"), results)
    with open(os.path.join(self.out, "report.md"), "w", encoding="utf-8") as f:
      f.write(report.render(results, self.out, step=entry["step"]))

  def _results(self) -> dict:
    path = os.path.join(self.out, "results.json")
    results = report.load_results(path)
    if results is not None and results["checkpoint"]["workdir"] != self.run_dir:
      raise ConfigError(f"{path} holds results of {results['checkpoint']['workdir']}, not "
                       f"{self.run_dir}; choose another --workdir")
    run_config = read_run_config(self.run_dir)
    if results is None:
      results = {"format": report.FORMAT, "checkpoint": {"workdir": self.run_dir,
                                                         "name": run_config.name},
                 "evaluations": []}
    results["eval_config"] = json.loads(cfg_lib.to_json(self.spec.config))
    results["run_config"] = run_config.to_dict()
    results["seed"] = self.spec.seed
    return results

  def run(self) -> dict:
    """Evaluate the requested step (or, following, every step); returns the results dict."""
    for task in self.tasks:
      task.prepare()  # bad inputs (multiple-choice files) fail here, before any checkpoint
    os.makedirs(self.out, exist_ok=True)
    results = self._results()
    if not self.spec.follow:
      step = self.path_step if self.spec.step < 0 else self.spec.step
      self._record(results, self.evaluate_step(results, step))
      return results
    return self._follow(results)

  def _follow(self, results) -> dict:
    final = int(read_run_config(self.run_dir).train.steps)
    done = {e["step"] for e in results["evaluations"]}
    damaged = set()
    last_new = time.time()
    while True:
      todo = [s for s in checkpoint_steps(self.run_dir) if s not in done]
      for s in todo:
        done.add(s)
        last_new = time.time()
        try:
          entry = self.evaluate_step(results, s)
        except DamagedCheckpointError as e:  # reported, skipped; the next step may be intact
          damaged.add(s)
          if self.main:
            _log.warning(f"follow: step {s} skipped: {e}")
          continue
        self._record(results, entry)
      if final in done:
        if self.main:
          state = "damaged (skipped)" if final in damaged else "evaluated"
          _log.info(f"follow: the run's final step {final} is {state}; done")
        return results
      if time.time() - last_new > self.spec.follow_idle_timeout:
        if self.main:
          _log.info(f"follow: no new checkpoint for {self.spec.follow_idle_timeout:.0f} s; stopping")
        return results
      time.sleep(self.spec.follow_poll_seconds)


def run(config, workdir: str, mesh=None) -> dict:
  return Evaluator(config, workdir, mesh=mesh).run()
