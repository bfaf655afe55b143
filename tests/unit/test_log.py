"""log: the project's logger prints each record as its message alone, INFO on stdout, WARNING and
up on stderr, and nothing reaches the root logger (absl's handler)."""
import logging

from medmoe_jax import log


def test_info_on_stdout_warning_on_stderr_message_alone(capsys):
  lg = log.get("medmoe_jax.some_module")
  lg.info("resuming from checkpoint step 2 in /x")
  lg.warning("checkpoint step 4 in /x is damaged")
  lg.error("checkpoint: saving step 6 failed")
  out, err = capsys.readouterr()
  assert out == "resuming from checkpoint step 2 in /x\n"
  assert err == "checkpoint step 4 in /x is damaged\ncheckpoint: saving step 6 failed\n"


def test_names_outside_the_package_become_children_and_nothing_propagates(capsys):
  lg = log.get("tools.helper")
  assert lg.name == "medmoe_jax.tools.helper"
  seen = []

  class Catch(logging.Handler):
    def emit(self, record):
      seen.append(record.getMessage())

  root, catch = logging.getLogger(), Catch()
  root.addHandler(catch)
  try:
    lg.info("one line")
  finally:
    root.removeHandler(catch)
  assert seen == [] and capsys.readouterr().out == "one line\n"


def test_the_level_quiets_progress(capsys):
  project = logging.getLogger(log.ROOT)
  project.setLevel(logging.WARNING)
  try:
    log.get(__name__).info("progress")
    log.get(__name__).warning("problem")
  finally:
    project.setLevel(logging.INFO)
  out, err = capsys.readouterr()
  assert (out, err) == ("", "problem\n")
