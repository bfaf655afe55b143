"""What a run does when something goes wrong: preemption, non-finite numbers, bad disks, bad input.

Why one module: the train loop only composes; the policy for each fault (and the exit code a
scheduler sees) lives here, so it is written down once and the README can point at it.

  fault                                  behaviour                                      exit code
  SIGTERM / SIGINT (preemption, Ctrl-C)  checkpoint at the current step, then stop        75
  another process of the job died        one line; rerun every process                    75
  non-finite loss or grad norm           "stop": stop, name the step, keep the last       3
                                         good checkpoint; "skip": drop the update
                                         inside the jitted step, count it, go on
  a checkpoint save fails                report, keep the previous checkpoint, go on;     4
                                         the run fails only if its last save fails
  bad config / input / workdir           one line naming what and where, before compute   2
  a damaged checkpoint (file missing,    one line naming step and file; the step is      -
  truncated, unreadable or changed: its  moved aside, the run resumes from the newest
  manifest; or no manifest and a read    intact one (with several processes: all from
  fails)                                 the same one); none intact: one line             2
  a flag error (unknown flag, bad value) one line                                         2
  disk full writing any other output     one line                                         4
  Ctrl-C outside training                one line                                         130
  anything else (a bug)                  its traceback and a line saying it is a bug      1

Every CLI (train, the dry run, eval, data, hf, experiments.expand) wraps its main in exit_codes.

75 is EX_TEMPFAIL ("try again"): a preempted run is not finished, so a scheduler that restarts
failed jobs restarts it, and `train && eval` does not evaluate a half-trained model.

Imports nothing heavy at module level: the CLI wrapper must be importable before JAX.
"""
from __future__ import annotations

import argparse
import errno
import functools
import os
import signal
import socket
import sys
import threading

from medmoe_jax import log
from medmoe_jax.errors import InputError

_log = log.get(__name__)

EXIT_INPUT = 2
EXIT_NONFINITE = 3
EXIT_SAVE_FAILED = 4
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: rerun the same command to resume
EXIT_BUG = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class WorkdirError(OSError):
  """The workdir cannot hold this run's outputs (not writable, not enough space)."""


class NonFiniteError(FloatingPointError):
  """Loss or gradient norm became NaN/Inf with config.train.on_nonfinite="stop"."""

  def __init__(self, message: str, step: int, last_checkpoint: int | None):
    super().__init__(message)
    self.step, self.last_checkpoint = step, last_checkpoint


class CheckpointSaveError(OSError):
  """A checkpoint that the run needs (its last one, or the preemption one) was not written."""


class Preempted(Exception):
  """SIGTERM/SIGINT arrived; a checkpoint at `step` was written and the run stopped early."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


# ----------------------------------------------------------------------------- preemption

_stop_event = threading.Event()


def wait_for_stop(timeout: float) -> bool:
  """Sleep up to `timeout` seconds, waking early when a stop is requested."""
  return _stop_event.wait(timeout)


class PreemptionGuard:
  """Turns SIGTERM/SIGINT into "checkpoint at the next step boundary, then stop".

  A signal handler may run between any two bytecodes, including inside Orbax; all it does is set
  a flag that the train loop reads once per step. A second signal of the same kind restores the
  default action and re-delivers it, so a stuck save can still be interrupted.

  Multi-process runs (jax.process_count() > 1) must agree on the step at which to save, or the
  collective save deadlocks. There JAX's preemption service already listens for SIGTERM, and
  `should_stop(step)` asks it through `multihost_utils.reached_preemption_sync_point`, which
  returns True on every host at the same step. Ctrl-C (SIGINT, to one process or, from a
  terminal, to all) is turned into that same notice: the handler sends this process a SIGTERM,
  after writing "SIGINT" to the coordination service so that every process names the signal.
  """

  _SIGNAL_KEY = "medmoe_jax: stop signal"

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.signals = tuple(signals)
    self.received: str | None = None
    self._previous: dict[int, object] = {}
    self._multiprocess = False

  def __enter__(self):
    import jax
    _stop_event.clear()
    self._multiprocess = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      return self  # off the main thread, Python cannot install handlers
    signals = self.signals
    if self._multiprocess:
      # JAX's preemption notifier owns SIGTERM; SIGINT is forwarded to it (when it runs).
      signals = (signal.SIGINT,) if (signal.SIGINT in signals and
                                     _preemption_service() is not None) else ()
    for sig in signals:
      self._previous[sig] = signal.getsignal(sig)
      signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    return False

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if _stop_event.is_set():
      # Second signal: give up on the clean stop and let the default action happen.
      signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
      os.kill(os.getpid(), signum)
      return
    self.received = name
    _stop_event.set()
    where = ("a step every process agrees on" if self._multiprocess
             else "the end of the current step")
    _log.warning(f"received {name}: writing a checkpoint at {where}, then stopping (exit code "
                 f"{EXIT_PREEMPTED}); send it again to stop now")
    if self._multiprocess:  # JAX's preemption service tells the other processes
      try:
        _preemption_service()[0].key_value_set(self._SIGNAL_KEY, name, allow_overwrite=True)
      except Exception:  # noqa: BLE001  (only the name in the other processes' message is lost)
        pass
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    if self._multiprocess:
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.received = self.received or self._signal_name()
          return True
      except RuntimeError:
        pass  # no preemption service (jax_enable_preemption_service off)
      return False
    return _stop_event.is_set()


  def _signal_name(self) -> str:
    """The signal another process received: SIGINT if its handler recorded it, else SIGTERM
    (which JAX's notifier handles without Python)."""
    try:
      return _preemption_service()[0].key_value_try_get(self._SIGNAL_KEY)
    except Exception:  # noqa: BLE001  (not found)
      return "SIGTERM"


def _preemption_service():
  """(coordination client, preemption sync manager) of a multi-process JAX job whose preemption
  service runs, else None."""
  from jax._src import distributed as jax_distributed  # no public API for either
  state = jax_distributed.global_state
  if state.client is None or getattr(state, "preemption_sync_manager", None) is None:
    return None
  return state.client, state.preemption_sync_manager


# ----------------------------------------------------------------------------- non-finite


def nonfinite_message(step: int, loss: float, grad_norm: float, last_checkpoint: int | None,
                      checkpoint_dir: str) -> str:
  kept = (f"the last good checkpoint is step {last_checkpoint} in {checkpoint_dir}"
          if last_checkpoint is not None else "no checkpoint was written before it")
  return (f"non-finite numbers at step {step} (loss={loss}, grad_norm={grad_norm}); stopped "
          f"without saving it, {kept}. Lower config.train.lr, raise config.train.warmup_frac or "
          "check the data of that step; config.train.on_nonfinite='skip' drops such updates")


# ----------------------------------------------------------------------------- workdir


def _is_remote(path: str) -> bool:
  return "://" in str(path)


def check_workdir(workdir: str) -> None:
  """Create `workdir` and prove a file can be written there; WorkdirError otherwise.

  Runs before data building and compilation, so a typo'd or read-only --workdir costs seconds.
  """
  if _is_remote(workdir):
    return  # object stores have no cheap probe; Orbax reports their errors on the first save
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "wb") as f:
      f.write(b"medmoe_jax")
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {os.path.abspath(workdir)!r} is not writable "
                       f"({e.strerror or e}); pass --workdir=<a writable directory>") from None


def check_free_space(workdir: str, checkpoint_bytes: int) -> None:
  """Refuse to start when the disk cannot hold even one checkpoint (it would fail at the first
  save, after the compile and the first `checkpoint_every` steps)."""
  if _is_remote(workdir):
    return
  import shutil
  free = shutil.disk_usage(workdir).free
  if free < checkpoint_bytes:
    raise WorkdirError(
        f"workdir {os.path.abspath(workdir)!r} has {free / 2**20:.1f} MiB free but one checkpoint "
        f"needs about {checkpoint_bytes / 2**20:.1f} MiB; free space or pass another --workdir")


def describe_save_error(e: BaseException) -> str:
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
    return f"{type(e).__name__}: {e.strerror} (disk full or a file-size limit)"
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


# ----------------------------------------------------------------------------- bad input


def locate_decode_error(files, error: UnicodeDecodeError) -> str:
  """The first file:line that is not UTF-8, for a UnicodeDecodeError raised while reading `files`
  (the codec's own message names neither)."""
  for path in files:
    try:
      with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
          try:
            raw.decode("utf-8")
          except UnicodeDecodeError as e:
            return (f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1}); re-encode the file as UTF-8")
    except OSError:
      continue
  return f"input is not UTF-8 ({error}); re-encode the data files as UTF-8"


# ----------------------------------------------------------------------------- CLI


# What a collective or the coordination service reports when another process of a multi-process
# job died or stalled (killed, preempted without notice, its host lost).
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "DEADLINE_EXCEEDED",
              "UNAVAILABLE", "heartbeat", "Gloo")


def _peer_lost(e: BaseException) -> bool:
  jax = sys.modules.get("jax")
  if jax is None or type(e).__name__ != "JaxRuntimeError" or jax.process_count() < 2:
    return False
  return any(p in str(e) for p in _PEER_LOST)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split("\n")).strip() or type(e).__name__


def exit_codes(main):
  """Wrap a CLI main (absl's or argparse's): faults a user can fix print one line to stderr and
  exit with their documented code; anything else is a bug: its traceback, then a line that
  says so (exit 1).

  User-fixable: InputError (every CLI's input errors derive from it: ConfigError, DataError,
  HFError, ...), WorkdirError, a missing/unreadable path (FileNotFoundError, PermissionError,
  ...), a full disk (exit 4), Ctrl-C outside training (exit 130), and a CLI's own
  SystemExit("error: ...")."""
  import traceback

  from absl.app import UsageError

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    def fail(code, text):
      print(text, file=sys.stderr, flush=True)
      sys.exit(code)

    def bug():
      traceback.print_exc()
      fail(EXIT_BUG, "internal error: the traceback above is a bug in medmoe_jax, not a problem "
                     "with the input; please report it with the command that was run")

    try:
      return main(*args, **kwargs)
    except Preempted as e:
      fail(EXIT_PREEMPTED, f"preempted: {_one_line(e)}")
    except NonFiniteError as e:
      fail(EXIT_NONFINITE, f"error: {_one_line(e)}")
    except CheckpointSaveError as e:
      fail(EXIT_SAVE_FAILED, f"error: {_one_line(e)}")
    except (InputError, WorkdirError) as e:
      fail(EXIT_INPUT, f"error: {_one_line(e)}")
    except OSError as e:
      if "config file" in str(e):  # ml_collections' config_flags: --config could not be loaded
        cause = e.__cause__ or e
        while cause.__cause__ is not None:
          cause = cause.__cause__
        last = [l.strip() for l in str(cause).splitlines() if l.strip()]
        fail(EXIT_INPUT, f"error: --config: the config file could not be loaded "
                         f"({last[-1] if last else type(cause).__name__})")
      if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fail(EXIT_SAVE_FAILED, f"error: writing {e.filename or 'an output'} failed: "
                               f"{describe_save_error(e)}; free space and run it again")
      if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError, FileExistsError)) or e.filename:
        fail(EXIT_INPUT, f"error: {_one_line(e)}")
      bug()
    except KeyboardInterrupt:
      fail(EXIT_INTERRUPTED, "interrupted (Ctrl-C)")
    except UsageError:
      raise  # absl prints the usage itself
    except SystemExit as e:
      if isinstance(e.code, str):  # a CLI's own one-line message
        fail(EXIT_INPUT, " ".join(e.code.split("\n")))
      raise
    except Exception as e:  # noqa: BLE001  (a bug: keep the traceback, say so)
      if _peer_lost(e):
        fail(EXIT_PREEMPTED, f"error: lost contact with another process of this job "
                             f"({_one_line(e)[:300]}); rerun every process: they resume from "
                             "the last complete checkpoint")
      bug()

  return wrapped


def _flags_error(text: str, helpflag: str):
  print(f"error: command-line flags: {text}; {helpflag} lists the flags", file=sys.stderr,
        flush=True)
  sys.exit(EXIT_INPUT)


def _parse_absl_flags(argv):
  """absl's flag parsing, with its errors (an unknown flag, a value of the wrong type) in one
  line and exit 2; absl's own prints two lines and exits 1."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _flags_error(_one_line(e), "--helpfull")


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the CLIs: a flag error is one line and exit 2 (argparse prints its usage
  first). Subcommand parsers inherit the class."""

  def error(self, message):
    _flags_error(f"{self.prog}: {_one_line(message)}", "--help")


def run_absl(main):
  """app.run(exit_codes(main)) for the absl CLIs (train, eval, data). What escapes app.run then
  was raised while parsing the flags, before main: a config key that does not exist or cannot be
  spelled on a command line (`upcycle.from`: use `from_`), a config file that does not compile.
  One line for those too (a SyntaxError names its file and line)."""
  from absl import app
  try:
    app.run(exit_codes(main), flags_parser=_parse_absl_flags)
  except Exception as e:  # noqa: BLE001  (only flag parsing reaches here)
    # ml_collections: KeyError / AttributeError("'key'") for a key the config does not have.
    name = str(e.args[0]).strip("\"'") if e.args else ""
    text = (f"no config key {name!r}; check the --config.<key> flags"
            if isinstance(e, (KeyError, AttributeError)) and name.isidentifier() else _one_line(e))
    print(f"error: command-line flags: {text}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INPUT)
