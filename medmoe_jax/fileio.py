"""Small file helpers shared by the writers of config.json, metrics, statistics and results."""
from __future__ import annotations

import os


def write_atomic(path, text: str) -> None:
  """Write `text` to `path` so that a reader, or a process killed mid-write, sees the old file
  or the new one, never half of one: write a temporary file beside it, then rename."""
  path = os.fspath(path)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
