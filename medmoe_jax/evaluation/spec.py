"""The eval config (configs/eval.py) resolved once into a frozen EvalSpec: the job's settings, the
held-out pass's, and each registered task's own (`Task.resolve`). Validation happens here and in
the tasks' `resolve`, each error one line naming the key; past this point nothing reads the
ConfigDict, which is kept only to be written into results.json."""
from __future__ import annotations

import dataclasses

from medmoe_jax.errors import ConfigError


def csv_list(value) -> list[str]:
  """A comma-separated config string (or a list) -> its non-empty items."""
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  return [v.strip() for v in str(value).split(",") if v.strip()]


def config_error(key: str, msg: str) -> ConfigError:
  return ConfigError(f"config.{key}: {msg}")


def at_least(c, key: str, low: int) -> int:
  """config.<key> (a dotted path), which must be an integer >= low."""
  node = c
  for part in key.split("."):
    node = node[part]
  if int(node) < low:
    raise config_error(key, f"must be >= {low}, got {node}")
  return int(node)


@dataclasses.dataclass(frozen=True)
class HeldoutSpec:
  """The pass over the run's held-out text (perplexity, routing)."""
  data_dir: str       # where the held-out split is built; "" = <workdir>/data
  seq_len: int        # 0: the run's data.seq_len
  max_batches: int    # > 0: at most N batches per language


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  checkpoint: str                 # a training workdir or one of its checkpoints/<step>
  step: int                       # -1: the latest (or the step the path names)
  tasks: tuple[str, ...]          # config.tasks as named (the baseline's cache key keeps it)
  languages: tuple[str, ...]      # () = every language
  batch_size: int
  seed: int
  progress: bool
  follow: bool
  follow_poll_seconds: float
  follow_idle_timeout: float
  overrides: tuple[tuple[str, object], ...]  # inference-only changes to the run's config
  mesh: dict                      # axis -> size (-1: the rest), like config.mesh
  heldout: HeldoutSpec
  settings: dict                  # task name -> its Task.resolve(c) (every registered task)
  config: object = dataclasses.field(default=None, compare=False, repr=False)


def resolve(c, registry) -> EvalSpec:
  """Validate the eval config `c` against the task classes of `registry` (ConfigError naming the
  key on the first problem) and freeze it. Cheap: no files read, no compute."""
  if "checkpoint" not in c or "tasks" not in c:
    raise ConfigError("config: not an eval config (no checkpoint, tasks); start from "
                      "configs/eval.py and name the run with --config.checkpoint=<training "
                      "workdir>")
  if not str(c.checkpoint).strip():
    raise config_error("checkpoint", "no checkpoint given; pass --config.checkpoint=<training "
                       "workdir> (or one of its checkpoints/<step>)")
  names = csv_list(c.tasks)
  choices = [t.name for t in registry if t.named]
  if not names or any(n not in choices for n in names):
    raise config_error("tasks", f"{c.tasks!r}: use a comma-separated subset of "
                       f"{', '.join(choices)}")
  settings = {t.name: t.resolve(c) for t in registry}
  heldout = HeldoutSpec(data_dir=str(c.perplexity.data_dir),
                        seq_len=at_least(c, "perplexity.seq_len", 0),
                        max_batches=at_least(c, "perplexity.max_batches", 0))
  batch_size = at_least(c, "batch_size", 1)
  if c.follow and c.follow_poll_seconds <= 0:
    raise config_error("follow_poll_seconds", f"must be > 0, got {c.follow_poll_seconds}")
  if c.model.capacity_factor_eval < 0:
    raise config_error("model.capacity_factor_eval", f"must be >= 0 (0 keeps the run's), got "
                       f"{c.model.capacity_factor_eval}")
  overrides = []
  if c.model.moe_backend:
    overrides.append(("moe.backend", c.model.moe_backend))
  if c.model.capacity_factor_eval:
    overrides.append(("moe.capacity_factor_eval", float(c.model.capacity_factor_eval)))
  return EvalSpec(
      checkpoint=str(c.checkpoint), step=int(c.step), tasks=tuple(names),
      languages=tuple(csv_list(c.languages)), batch_size=batch_size, seed=int(c.seed),
      progress=bool(c.progress), follow=bool(c.follow),
      follow_poll_seconds=float(c.follow_poll_seconds),
      follow_idle_timeout=float(c.follow_idle_timeout), overrides=tuple(overrides),
      mesh=dict(c.mesh), heldout=heldout, settings=settings, config=c)
