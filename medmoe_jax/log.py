"""The project's logger: library code reports progress and problems through it, never with
print; a CLI prints its own final report and error line.

    _log = log.get(__name__)   # "medmoe_jax.<module>", a child of the "medmoe_jax" logger
    _log.info(...)             # progress: a line on stdout
    _log.warning(...)          # something the user should know: a line on stderr

A record reads as its message alone, on stdout below WARNING and on stderr from WARNING up,
written to sys.stdout / sys.stderr as they are at that moment (redirections and test captures see
it). The "medmoe_jax" logger does not propagate to the root logger: absl's handler, whose
verbosity the CLIs lower to WARNING against Orbax's per-save INFO lines, neither repeats nor hides
these lines. Quiet it with logging.getLogger("medmoe_jax").setLevel(logging.WARNING).
"""
from __future__ import annotations

import logging
import sys

ROOT = "medmoe_jax"


class _ConsoleHandler(logging.Handler):
  """One line per record: INFO (and below) to stdout, WARNING and above to stderr."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
      stream.write(self.format(record) + "\n")
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def _setup() -> logging.Logger:
  root = logging.getLogger(ROOT)
  if not any(isinstance(h, _ConsoleHandler) for h in root.handlers):
    root.addHandler(_ConsoleHandler())
    root.setLevel(logging.INFO)
    root.propagate = False
  return root


_setup()


def get(name: str) -> logging.Logger:
  """The logger of module `name` (pass __name__): a child of the project's logger."""
  return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")
