"""The evaluation tasks, by name: each is one module of this package with one Task subclass
(tasks/base.py says what a task implements). Adding a task is its module and one entry in TASKS.

config.tasks names the tasks to run (a comma-separated subset of `named()`); tasks that are not
named (forgetting) choose themselves from the resolved config (`Task.selected`).
"""
from __future__ import annotations

from medmoe_jax.evaluation import spec as spec_lib
from medmoe_jax.evaluation.tasks import forgetting, mcq, perplexity, routing
from medmoe_jax.evaluation.tasks.base import Task

# In the order they run: routing shares perplexity's pass over the held-out text, forgetting
# compares what the tasks before it measured with the baseline's.
TASKS: tuple[type[Task], ...] = (mcq.MCQ, perplexity.Perplexity, routing.Routing,
                                 forgetting.Forgetting)
REGISTRY: dict[str, type[Task]] = {t.name: t for t in TASKS}


def named() -> tuple[str, ...]:
  """The names config.tasks may hold."""
  return tuple(t.name for t in TASKS if t.named)


def resolve(c) -> spec_lib.EvalSpec:
  """The eval config validated against the registered tasks and frozen (evaluation/spec.py)."""
  return spec_lib.resolve(c, TASKS)


def select(spec: spec_lib.EvalSpec) -> list[Task]:
  """The tasks the eval spec runs, in running order, made with it."""
  return [t(spec) for t in TASKS if t.selected(spec)]
