"""Checkpoint integrity: a manifest of every file of a step (size and sha256), written as the save
commits and checked before a restore. A damaged step is named in one line and moved aside.

Why: Orbax marks a step complete when its files were written, not that they are still intact. A
truncated, missing or changed file (a full disk, a half-synced copy, a bad block) otherwise
surfaces as a TensorStore traceback in the middle of the restore, or (a changed byte in an
array) not at all.

Layout: <step>/medmoe_manifest.json = {"format": 1, "files": {"state/_METADATA": {"size": N,
"sha256": "..."}, ...}} over every file of the step (parameters and optimizer moments in
state/, the data-iterator positions in data/, Orbax's metadata). Files Orbax adds after the
manifest (its commit markers) are not listed and not checked.

A step without a manifest (written before manifests existed, or by a synchronous save killed
between its commit and the manifest) cannot be checked here; its restore is guarded instead
(checkpoint.Checkpointer treats a read error there as damage).

Paths go through etils.epath, as Orbax's own do, so the same code serves a local disk and gs://.
Moving a step aside renames <step> to <step>.damaged (then .damaged.1, ...): nothing is deleted,
and Orbax no longer lists it as a step.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json

from etils import epath

from medmoe_jax import urls
from medmoe_jax.errors import InputError

MANIFEST = "medmoe_manifest.json"
# Orbax rewrites the step's metadata as it commits (it adds the commit time), after the manifest:
# for it the manifest records only that it must exist and hold JSON.
REWRITTEN_AT_COMMIT = ("_CHECKPOINT_METADATA",)
DAMAGED_SUFFIX = ".damaged"
_CHUNK = 1 << 20


class DamagedCheckpointError(InputError):
  """A checkpoint step failed its check (or could not be read); the message names step and file."""

  def __init__(self, message: str, step: int | None = None, file: str | None = None):
    super().__init__(message)
    self.step, self.file = step, file


@dataclasses.dataclass(frozen=True)
class Damage:
  file: str      # relative to the step directory
  reason: str    # "is missing", "is truncated (10 of 200 bytes)", ...

  def describe(self, step_dir) -> str:
    return f"{epath.Path(step_dir) / self.file} {self.reason}"


def _files(step_dir: epath.Path, prefix: str = ""):
  for p in sorted(step_dir.iterdir(), key=lambda p: p.name):
    rel = f"{prefix}{p.name}"
    if p.is_dir():
      yield from _files(p, rel + "/")
    elif rel != MANIFEST and not rel.startswith(MANIFEST + "."):
      yield rel, p


def _digest(path: epath.Path) -> tuple[int, str]:
  h, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    while True:
      block = f.read(_CHUNK)
      if not block:
        return size, h.hexdigest()
      size += len(block)
      h.update(block)  # releases the GIL for large blocks: files hash in parallel threads


def _pool():
  return concurrent.futures.ThreadPoolExecutor(max_workers=8)


def write_manifest(step_dir) -> None:
  """Hash every file under `step_dir` and write the manifest so that a reader never sees half of
  it: write-then-rename on a filesystem; in an object store (gs://) one upload, which is atomic
  there, while a rename is a copy and a delete."""
  step_dir = epath.Path(step_dir)
  files = list(_files(step_dir))
  with _pool() as pool:
    digests = list(pool.map(lambda item: _digest(item[1]), files))
  manifest = {"format": 1, "files": {
      rel: {"json": True} if rel in REWRITTEN_AT_COMMIT else {"size": size, "sha256": sha}
      for (rel, _), (size, sha) in zip(files, digests)}}
  text = json.dumps(manifest, indent=0, sort_keys=True)
  if urls.is_url(step_dir):
    (step_dir / MANIFEST).write_text(text)
    return
  tmp = step_dir / f"{MANIFEST}.tmp"
  tmp.write_text(text)
  tmp.replace(step_dir / MANIFEST)


def has_manifest(step_dir) -> bool:
  return (epath.Path(step_dir) / MANIFEST).exists()


def _check_one(step_dir: epath.Path, rel: str, want: dict) -> Damage | None:
  path = step_dir / rel
  try:
    if not path.exists():
      return Damage(rel, "is missing")
    if want.get("json"):
      json.loads(path.read_text())
      return None
    size, sha = _digest(path)
  except OSError as e:
    return Damage(rel, f"is unreadable ({e.strerror or e})")
  except ValueError:  # JSON, or bytes that are not UTF-8
    return Damage(rel, "is not the JSON that was written (truncated or changed)")
  if size < want["size"]:
    return Damage(rel, f"is truncated ({size} of {want['size']} bytes)")
  if size != want["size"]:
    return Damage(rel, f"has {size} bytes, {want['size']} were written")
  if sha != want["sha256"]:
    return Damage(rel, "has changed contents (sha256 differs from the one written with it)")
  return None


def verify(step_dir) -> Damage | None:
  """The first damaged file of a step (in manifest order), or None when every file listed in
  its manifest is present with its size and sha256. None too when there is no manifest."""
  step_dir = epath.Path(step_dir)
  path = step_dir / MANIFEST
  if not path.exists():
    return None
  try:
    files = json.loads(path.read_text())["files"]
    items = sorted(files.items())
    for _, want in items:
      if not want.get("json"):
        int(want["size"]), str(want["sha256"])
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return Damage(MANIFEST, "is unreadable (not the JSON manifest that was written)")
  with _pool() as pool:
    found = list(pool.map(lambda kv: _check_one(step_dir, *kv), items))
  return next((d for d in found if d is not None), None)


def move_aside(step_dir) -> epath.Path:
  """Rename <step> to <step>.damaged (or .damaged.N if that exists); returns the new path."""
  step_dir = epath.Path(step_dir)
  target = step_dir.parent / f"{step_dir.name}{DAMAGED_SUFFIX}"
  n = 0
  while target.exists():
    n += 1
    target = step_dir.parent / f"{step_dir.name}{DAMAGED_SUFFIX}.{n}"
  step_dir.rename(target)
  return target


def damaged_message(step: int, directory, damage_text: str, moved_to=None) -> str:
  where = (f"moved aside to {moved_to}" if moved_to is not None
           else "left in place (read-only)")
  return f"checkpoint step {step} in {directory} is damaged: {damage_text}; {where}"
