"""Orbax checkpoints: train state + data-iterator state, async, restorable onto any mesh.

Layout: <workdir>/checkpoints/<step>/{state,data}. Orbax (0.12) writes each step into
`<step>.orbax-checkpoint-tmp`, writes `commit_success.txt` there, and renames it to `<step>` as
the last act (on object stores, which cannot rename, the commit file alone marks completion).
Step discovery only lists finalized directories, so a process killed mid-save leaves a tmp
directory that is never restored; `cleanup_tmp_directories` deletes it at the next start.
tests/test_kill_resume.py kills a run inside that window and checks both.

A failed save (disk full, permissions) is reported and leaves the previous checkpoints alone:
Orbax deletes old steps (keep=N) only after the new one has been finalized.

With several processes, every process writes its shards of `state` and its own data-iterator
state (data/process_<i>-of-<n>.json, grain's Orbax handler): each process reads its own shard of
the data, so each needs its own position back.

Integrity (checkpoint_integrity.py): as a step commits, process 0 writes a manifest of its files
(size, sha256). Before the newest step is used it is checked; a damaged one is reported in one
line, moved aside (renamed, never deleted) and the next newest is tried.

With several processes every decision about a step is taken once and shared: process 0 checks
manifests and renames (the others wait, so nothing is renamed while another process reads), and
a restore that fails on any process (a step without a manifest whose files cannot be read) fails
on all: every process reports what it found, then all fall back to the same step.
"""
from __future__ import annotations

import json
import logging
import os

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from medmoe_jax import checkpoint_integrity as integrity
from medmoe_jax import log
from medmoe_jax.checkpoint_integrity import DamagedCheckpointError
from medmoe_jax.errors import InputError
from medmoe_jax.training import faults
from medmoe_jax.treepath import path_str
from medmoe_jax.training.step import TrainState

_log = log.get(__name__)

# Test hook (tests/test_kill_resume.py): "STEP:SECONDS" pauses the background save of STEP after
# every file is written and before the rename that commits it, so a test can SIGKILL the process
# inside that window deterministically. A stop signal (SIGTERM/SIGINT) ends the pause early.
PAUSE_ENV = "MEDMOE_TEST_PAUSE_IN_SAVE"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step being written


class CheckpointMismatchError(InputError):
  """The checkpoint in the workdir was written for a different model/optimizer shape."""


class _IteratorState:
  """What grain's checkpoint handler saves and restores per process (get_state/set_state), for a
  state dict we already hold."""

  def __init__(self, state: dict | None = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state or {}).encode()

  def set_state(self, raw: bytes) -> None:
    self.state = json.loads(raw.decode())

  def start_prefetch(self) -> None:
    pass


def _as_dict(state: TrainState) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


class _DropReadOnlyNotice(logging.Filter):
  """Orbax logs a WARNING "Given directory is read only=..." for every read-only manager. Here
  read-only is the request (an evaluation reading a training workdir), not a problem."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    # read_only: for readers beside a running training job (evaluation): never creates, deletes
    # or cleans up anything in `directory`.
    # gs://... (shared by all hosts) stays a URL; Orbax writes it through etils.epath.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.failed_steps: list[int] = []
    self.damaged_steps: list[int] = []  # found damaged here (moved aside unless read-only)
    self._read_only = bool(read_only)
    self._intact: set[int] = set()  # steps whose files matched their manifest
    self._inflight: int | None = None
    self._async = bool(async_save)
    self._pause = _parse_pause(os.environ.get(PAUSE_ENV, "")) if async_save else None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
        create=not read_only, read_only=read_only, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        # Runs on process 0 after every process wrote its files, before the commit (rename).
        async_options=(ocp.AsyncOptions(post_finalization_callback=self._before_commit)
                       if async_save and not read_only else None))
    absl_logger, notice = logging.getLogger("absl"), _DropReadOnlyNotice()
    absl_logger.addFilter(notice)
    try:
      # Explicit handlers (not just item names) so that metadata can be read before a restore.
      self._mngr = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "data": grain.checkpoint.CheckpointHandler()})
    finally:
      absl_logger.removeFilter(notice)
    self._reader = ocp.CompositeCheckpointHandler(state=ocp.StandardCheckpointHandler(),
                                                  data=grain.checkpoint.CheckpointHandler())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    # Read-only readers cannot move a damaged step aside; they skip it. (A writable one renamed
    # it: the same step number, written again later, is a new step.)
    skip = self.damaged_steps if self._read_only else ()
    return sorted(s for s in self._mngr.all_steps() if s not in skip)

  def step_dir(self, step: int) -> epath.Path:
    return epath.Path(self.directory) / str(step)

  def set_aside_damaged(self, unreadable: tuple[int, str] | None = None) -> int | None:
    """Check the newest steps until one is intact; report each damaged one in one line and move
    it aside (read-only: skip it). Returns the newest intact step (None: no checkpoint left).
    unreadable: (step, why), a step a restore could not read: set aside first.
    With several processes, process 0 checks and moves; the others wait and read the result."""
    multi = jax.process_count() > 1
    if not multi or jax.process_index() == 0:
      if unreadable is not None:
        self._set_aside(*unreadable)
        self._mngr.reload()
      for step in reversed(self.all_steps()):
        if step in self._intact:
          break
        damage = integrity.verify(self.step_dir(step))
        if damage is None:
          self._intact.add(step)
          break
        self._set_aside(step, damage.describe(self.step_dir(step)))
    if multi:
      from medmoe_jax.distributed import share_from_process_0
      found = json.loads(share_from_process_0(
          f"medmoe_jax: damaged checkpoints in {self.directory}",
          json.dumps({"damaged": self.damaged_steps, "intact": sorted(self._intact)})))
      self.damaged_steps = found["damaged"]
      self._intact.update(found["intact"])  # checked once, on process 0
    self._mngr.reload()
    return self.latest_step()

  def check_intact(self, step: int) -> None:
    """Raise DamagedCheckpointError naming the first damaged file of `step` (checked once)."""
    if step in self._intact:
      return
    damage = integrity.verify(self.step_dir(step))
    if damage is not None:
      raise DamagedCheckpointError(f"checkpoint step {step} in {self.directory} is damaged: "
                                   f"{damage.describe(self.step_dir(step))}", step, damage.file)
    self._intact.add(step)

  def _set_aside(self, step: int, damage_text: str) -> None:
    moved = None if self._read_only else integrity.move_aside(self.step_dir(step))
    self.damaged_steps.append(step)
    self._intact.discard(step)
    _log.warning(integrity.damaged_message(step, self.directory, damage_text, moved))

  def save(self, step: int, state: TrainState, data_state: dict | None, *, force=False) -> bool:
    """Start saving `step` (async). Returns False, after printing why, when this save or the
    previous async one failed; the checkpoints already on disk are untouched either way."""
    # Orbax would wait for the previous async save anyway; waiting here first attributes its
    # failure (if any) to its own step.
    ok = self.wait()
    args = ocp.args.Composite(state=ocp.args.StandardSave(_as_dict(state)),
                              data=grain.checkpoint.CheckpointSave(_IteratorState(data_state)))
    self._inflight = step
    try:
      saved = self._mngr.save(step, args=args, force=force)
      if saved and not self._async and jax.process_index() == 0:
        # A synchronous save has committed already: the manifest follows it.
        integrity.write_manifest(self.step_dir(step))
    except Exception as e:  # noqa: BLE001  (any storage error; reported, training goes on)
      self._failed(step, e)
      return False
    if not self._async:
      self._inflight = None
    return saved and ok

  def wait(self) -> bool:
    """Block until the in-flight save is committed. False (after reporting) if it failed."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._failed(self._inflight, e)
      return False
    self._inflight = None
    return True

  def _failed(self, step: int | None, e: BaseException) -> None:
    self._inflight = None
    self._mngr.reload()  # forget the step Orbax listed optimistically before it was committed
    if step is not None:
      self.failed_steps.append(step)
    latest = self.latest_step()
    kept = (f"step {latest} is the last complete checkpoint" if latest is not None
            else "no complete checkpoint exists yet")
    _log.error(f"checkpoint: saving step {step} in {self.directory} failed "
               f"({faults.describe_save_error(e)}); {kept}")

  def check_compatible(self, abstract_state: TrainState, step: int | None = None) -> None:
    """Raise CheckpointMismatchError naming the first array whose shape (or presence) differs
    between the checkpoint and `abstract_state`. Reads metadata only: no arrays, no compute."""
    step = self.latest_step() if step is None else step
    if step is None:
      return
    where = f"checkpoint step {step} in {self.directory}"
    saved = self._mngr.item_metadata(step)["state"]
    if saved is None:
      raise CheckpointMismatchError(f"{where} has no train state ('state' item); pass a new --workdir")
    # Parameters first: the first mismatch named should be a parameter, not an Adam moment.
    want = {}
    for part in ("params", "opt_state", "step"):
      want.update({f"{part}/{path_str(p)}".rstrip("/"): x for p, x in
                   jax.tree_util.tree_flatten_with_path(_as_dict(abstract_state)[part])[0]})
    have = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(
        saved, is_leaf=lambda x: hasattr(x, "shape"))[0]}
    fix = ("resume with the config that wrote it (see config.json next to checkpoints/) or "
           "pass a new --workdir")
    for name, x in want.items():
      if name not in have:
        raise CheckpointMismatchError(f"{where} has no {name!r}, which this config needs; {fix}")
      got = tuple(getattr(have[name], "shape", ()) or ())
      if got != tuple(x.shape):
        raise CheckpointMismatchError(
            f"{where}: {name} has shape {got} there but {tuple(x.shape)} in this config; {fix}")
    extra = [n for n in have if n not in want]
    if extra:
      raise CheckpointMismatchError(f"{where} has {extra[0]!r}, which this config lacks; {fix}")

  def restore(self, abstract_state: TrainState, step: int | None = None):
    """abstract_state: TrainState of jax.ShapeDtypeStruct carrying the target shardings (so a
    checkpoint written on one mesh restores onto another). Returns (state, data_state, step).

    step=None: the newest intact step. A step that passed its manifest check (or has none) but
    cannot be read is damaged too: with no manifest to blame a bug instead, it is moved aside and
    the next is tried; otherwise the error is reported in one line. With several processes, a
    read that fails on any of them fails on all, and all fall back to the same step."""
    explicit = step is not None
    step = self.latest_step() if step is None else step
    while True:
      if step is None:
        raise self.no_intact_checkpoint_error()
      restored, failure = None, None
      try:
        restored = self._restore(abstract_state, step)
      except DamagedCheckpointError:
        raise
      except _Unreadable as e:
        failure = str(e)
      except Exception as e:  # noqa: BLE001  (filtered: read errors only)
        cause = _read_error(e)
        if cause is None:
          raise
        failure = f"it could not be read ({faults.describe_save_error(cause)})"
      failure = _failure_on_any_process(f"medmoe_jax: restore from {self.directory}", failure)
      if failure is None:
        return restored
      if explicit or integrity.has_manifest(self.step_dir(step)):
        raise DamagedCheckpointError(
            f"checkpoint step {step} in {self.directory}: {failure}; move {self.step_dir(step)} "
            "aside (rename it) to resume from the step before it", step)
      step = self.set_aside_damaged(unreadable=(step, failure))

  def _restore(self, abstract_state: TrainState, step: int):
    """This process's part of `step`. Through the handlers, not the manager: the manager's
    restore ends in a barrier that a process whose read failed would never reach; restore()
    meets the other processes itself, after every read."""
    self.check_intact(step)
    items = dict(state=ocp.args.StandardRestore(_as_dict(abstract_state)))
    data_dir = self.step_dir(step) / "data"
    count = jax.process_count()
    mine = data_dir / f"process_{jax.process_index()}-of-{count}.json"
    if mine.exists():
      try:
        json.loads(mine.read_text())
      except (OSError, ValueError) as e:  # the handler's own error would not name the file
        why = e.strerror if isinstance(e, OSError) and e.strerror else "not the JSON written"
        raise _Unreadable(f"{mine} is unreadable ({why})") from None
      items["data"] = grain.checkpoint.CheckpointRestore(_IteratorState())
    elif data_dir.exists() and any(data_dir.glob(f"process_*-of-{count}.json")):
      raise _Unreadable(f"{mine} is missing")  # the other processes' positions are there
    else:  # written by another number of processes: the data shards differ
      logging.warning("checkpoint %s step %d has no data-iterator state for %s; parameters and "
                      "optimizer restored, the data stream starts over", self.directory, step,
                      mine.name)
    restored = self._reader.restore(self.step_dir(step), ocp.args.Composite(**items))
    s = restored["state"]
    data_state = restored["data"].state if "data" in items else None
    return TrainState(s["step"], s["params"], s["opt_state"]), data_state, step

  def restore_params(self, abstract_params, step: int | None = None):
    """Only the parameters of a train state (no optimizer state, no data iterator): what
    evaluation needs. abstract_params: pure-dict tree of jax.ShapeDtypeStruct with target
    shardings. Returns (params, step).

    step=None: the newest intact step (damaged newer ones are reported and skipped, or moved
    aside by a writable checkpointer); a given step that is damaged raises
    DamagedCheckpointError."""
    if step is None:
      newest = self.latest_step()
      step = self.set_aside_damaged()
      if step is not None and step != newest:
        _log.warning(f"using checkpoint step {step} in {self.directory}, the newest intact one")
    if step is None:
      raise self.no_intact_checkpoint_error()
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"available steps: {self.all_steps()}")
    self.check_intact(step)
    # The manager's "state" handler restores whole trees; read the item directly to take only
    # the parameters (no optimizer moments are loaded).
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
    try:
      with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(
            self.step_dir(step) / "state",
            args=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                        restore_args={"params": restore_args},
                                        partial_restore=True))
    except Exception as e:  # noqa: BLE001  (filtered: read errors only)
      cause = _read_error(e)
      if cause is None:
        raise
      raise DamagedCheckpointError(
          f"checkpoint step {step} in {self.directory}: it could not be read "
          f"({faults.describe_save_error(cause)}); pick another step", step) from None
    return restored["params"], step

  def no_intact_checkpoint_error(self) -> Exception:
    if self.damaged_steps:
      return DamagedCheckpointError(
          f"no intact checkpoint in {self.directory}: every step is damaged "
          f"({', '.join(map(str, sorted(self.damaged_steps)))}; see above)")
    return FileNotFoundError(f"no checkpoint in {self.directory}")

  def close(self):
    self.wait()
    self._mngr.close()
    self._reader.close()

  def _before_commit(self):
    """Process 0, after every process has written its files of the in-flight step, before Orbax
    commits it: the manifest goes into the step while it is still temporary, so a committed
    step always has one."""
    step = self._inflight
    if step is not None:
      tmp = sorted(epath.Path(self.directory).glob(f"{step}{TMP_SUFFIX}*"))
      # Object stores have no rename: the step is written in place, marked by a commit file.
      integrity.write_manifest(tmp[-1] if tmp else self.step_dir(step))
    if self._pause:
      self._test_pause()

  def _test_pause(self):
    step, seconds = self._pause
    if self._inflight == step:
      _log.warning(f"medmoe test hook: checkpoint step {step} is fully written to a temporary "
                   f"directory; pausing {seconds:g}s before committing it")
      faults.wait_for_stop(seconds)


class _Unreadable(Exception):
  """This process could not read its part of a step; the message names the file and why."""


def _failure_on_any_process(name: str, failure: str | None) -> str | None:
  """`failure` (what this process's read of a step found, None: nothing), or with several
  processes the first failure of any of them, the same on all. Every process calls it."""
  if jax.process_count() == 1:
    return failure
  from medmoe_jax.distributed import share_from_every_process
  found = [json.loads(v) for v in share_from_every_process(name, json.dumps(failure))]
  return next((f"{text} (found by process {i})" for i, text in enumerate(found) if text), None)


def _read_error(e: BaseException) -> BaseException | None:
  """The storage error behind a failed restore (TensorStore raises ValueError, "OUT_OF_RANGE:
  ..." for a truncated file; Orbax wraps it in a bare Exception), or None for anything else (a
  bug keeps its traceback)."""
  seen = 0
  while e is not None and seen < 8:
    if isinstance(e, (ValueError, OSError, KeyError, UnicodeDecodeError)):
      return e
    e, seen = e.__cause__ or e.__context__, seen + 1
  return None


def _parse_pause(value: str):
  if not value:
    return None
  try:
    step, seconds = value.split(":")
    return int(step), float(seconds)
  except ValueError:
    raise ValueError(f"{PAUSE_ENV}={value!r}: expected STEP:SECONDS, e.g. 4:600") from None


def read_run_config(workdir: str):
  """The resolved config a training run wrote to <workdir>/config.json, as a ConfigDict."""
  import ml_collections

  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no config.json; pass the training workdir (the directory "
                            "holding config.json and checkpoints/)")
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise InputError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
  return ml_collections.ConfigDict(data)


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
