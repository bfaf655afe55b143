"""The evaluation tasks, by name: each is one module of this package with one Task subclass
(tasks/base.py says what a task implements). Adding a task is its module and one entry in TASKS.

config.tasks names the tasks to run (a comma-separated subset of `named()`); tasks that are not
named (forgetting) choose themselves from the config (`Task.selected`).
"""
from __future__ import annotations

from medmoe_jax.evaluation.tasks import forgetting, mcq, perplexity, routing
from medmoe_jax.evaluation.tasks.base import Task, config_error, csv_list

# In the order they run: routing shares perplexity's pass over the held-out text, forgetting
# compares what the tasks before it measured with the baseline's.
TASKS: tuple[type[Task], ...] = (mcq.MCQ, perplexity.Perplexity, routing.Routing,
                                 forgetting.Forgetting)
REGISTRY: dict[str, type[Task]] = {t.name: t for t in TASKS}


def named() -> tuple[str, ...]:
  """The names config.tasks may hold."""
  return tuple(t.name for t in TASKS if t.named)


def validate(c) -> None:
  """config.tasks names known tasks, and every task's settings are valid (ConfigError, one line
  naming the key)."""
  names = csv_list(c.tasks)
  choices = named()
  if not names or any(n not in choices for n in names):
    raise config_error("tasks", f"{c.tasks!r}: use a comma-separated subset of "
                       f"{', '.join(choices)}")
  for t in TASKS:
    t.validate(c)


def select(c) -> list[Task]:
  """The tasks this (validated) eval config runs, in running order, made with the config."""
  names = csv_list(c.tasks)
  return [t(c) for t in TASKS if t.selected(c, names)]
