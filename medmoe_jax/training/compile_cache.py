"""XLA's persistent compilation cache for `python -m medmoe_jax.train`: a restart, a resumed or
preempted job, or an eval beside training reads its compiled programs instead of recompiling."""
from __future__ import annotations

from medmoe_jax import paths


def compilation_cache_dir(flag: str | None, workdir: str, preset: str | None = None) -> str | None:
  """Where the cache lives: the flag; else a directory already set (`preset`:
  JAX_COMPILATION_CACHE_DIR in the environment); else <workdir>/compilation_cache (workdir may
  be a gs:// URL, shared by a pod's hosts). None when the flag says 'none' or ''."""
  if flag is not None:
    return None if flag.strip().lower() in ("", "none") else paths.absolute(flag)
  return preset or workdir.rstrip("/") + "/compilation_cache"


def enable_compilation_cache(directory: str | None) -> None:
  """Every program that took at least a second to compile (JAX's default threshold: the train
  and init steps, not the small helpers) is written to and read from `directory`; None turns
  the cache off. Call before anything compiles: JAX fixes the cache at the first compile."""
  import jax
  if directory:
    jax.config.update("jax_compilation_cache_dir", directory)
  else:
    jax.config.update("jax_enable_compilation_cache", False)
