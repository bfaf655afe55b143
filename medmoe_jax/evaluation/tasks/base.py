"""The interface every evaluation task implements, and what the tasks of one model share.

A task is one class with a `name`. Its `resolve` freezes its part of the eval config when the
config is resolved (evaluation/spec.py); the Evaluator (evaluation/evaluator.py) makes one
instance per evaluation with the EvalSpec, and for each model it evaluates calls `evaluate`,
whose dict it merges into that model's entry of results.json, then `figures` on process 0.
Registering it is one line in tasks/__init__.py.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable


def figure(name: str, path: str | None) -> dict[str, str]:
  """A task's `figures` result for one plot: {} when nothing was drawn (path None)."""
  return {name: path} if path else {}


@dataclasses.dataclass
class ModelRun:
  """The evaluation of one model: what its tasks read and share.

  ev: the Evaluator (its EvalSpec `spec`, output directory `out`, `main` process, `bar`,
  `write_predictions`, `load`, `evaluate_model` and `once`); lm: the model
  (evaluation/lm.LanguageModel, whose `run` is the run's resolved config); names: the tasks
  evaluating this model; entry: what they returned so far; results: results.json so far
  (None while the model is the forgetting baseline); ppl_languages: held-out languages to use
  instead of the config's; predictions_dir: where per-item predictions go (None: nowhere)."""
  ev: object
  lm: object
  names: frozenset
  entry: dict = dataclasses.field(default_factory=dict)
  results: dict | None = None
  ppl_languages: list | None = None
  predictions_dir: str | None = None
  _shared: dict = dataclasses.field(default_factory=dict, repr=False)

  def once(self, key: str, compute: Callable):
    """compute() the first time a task of this model asks for `key`, its value after that (the
    perplexity and routing tasks share one pass over the held-out text)."""
    if key not in self._shared:
      self._shared[key] = compute()
    return self._shared[key]


class Task:
  """One evaluation task. Subclasses set `name` and implement `evaluate`; the rest is optional.

  named: chosen by config.tasks (False: by `selected` alone). on_baseline: also evaluated on the
  forgetting baseline, whose numbers the forgetting task compares with the model's."""
  name = ""
  named = True
  on_baseline = False

  def __init__(self, spec):
    self.spec = spec                          # the EvalSpec
    self.settings = spec.settings[self.name]  # what this task's `resolve` made of the config

  @classmethod
  def resolve(cls, c):
    """This task's own part of the eval config `c`, validated (ConfigError, one line naming the
    key) and frozen; None when it has none. Called for every registered task, selected or not:
    a config is right or wrong whatever tasks it names."""
    del c
    return None

  @classmethod
  def selected(cls, spec) -> bool:
    """Whether this evaluation runs the task (spec.tasks: config.tasks)."""
    return cls.name in spec.tasks

  def prepare(self) -> None:
    """Cheap checks of the task's inputs, before any checkpoint is read."""

  def evaluate(self, m: ModelRun) -> dict:
    """The task's numbers for the model m.lm: {results.json key: value}."""
    raise NotImplementedError

  def figures(self, entry: dict, fig_dir: str, step: int) -> dict[str, str]:
    """Writes the task's figures of a step's entry into fig_dir: {name: path}."""
    del entry, fig_dir, step
    return {}
