"""Tree paths (jax.tree_util key paths) as the strings the code matches and reports:
"segments/1/blocks/ffn/router"."""
from __future__ import annotations


def path_keys(path) -> list[str]:
  """Each key of a jax key path as a string (dict keys, attribute names, sequence indices)."""
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def path_str(path) -> str:
  return "/".join(path_keys(path))
