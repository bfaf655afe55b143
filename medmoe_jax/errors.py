"""The errors a user can fix: every CLI reports them in one line (training/faults.exit_codes,
exit 2). A leaf module (no package imports), so any module can raise them without importing the
config or the trainer."""


class InputError(ValueError):
  """Bad user input (data files, paths, checkpoints) found before compute; one-line message."""


class ConfigError(InputError):
  """A config value is wrong; the message names the key and what to do."""
