"""Orbax checkpoints: train state + data-iterator state, async, restorable onto any mesh.

Layout: <workdir>/checkpoints/<step>/{state,data}. Orbax writes each step to a temporary
directory and renames it when complete, so a half-written step is never picked up.
With several processes, every process writes its shards of `state` and its own data-iterator
state (data/process_<i>-of-<n>.json, grain's Orbax handler): each process reads its own shard of
the data, so each needs its own position back.
"""
from __future__ import annotations

import json
import logging
import os

import grain
import jax
from etils import epath
import orbax.checkpoint as ocp

from medmoe_jax.training.step import TrainState


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


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    # gs://... (shared by all hosts) stays a URL; Orbax writes it through etils.epath.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: TrainState, data_state: dict | None, *, force=False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(_as_dict(state)),
                              data=grain.checkpoint.CheckpointSave(_IteratorState(data_state)))
    return self._mngr.save(step, args=args, force=force)

  def restore(self, abstract_state: TrainState, step: int | None = None):
    """abstract_state: TrainState of jax.ShapeDtypeStruct carrying the target shardings (so a
    checkpoint written on one mesh restores onto another). Returns (state, data_state, step)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = dict(state=ocp.args.StandardRestore(_as_dict(abstract_state)))
    mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if (epath.Path(self.directory) / str(step) / "data" / mine).exists():
      items["data"] = grain.checkpoint.CheckpointRestore(_IteratorState())
    else:  # written by another number of processes: the data shards differ
      logging.warning("checkpoint %s step %d has no data-iterator state for %s; parameters and "
                      "optimizer restored, the data stream starts over", self.directory, step, mine)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    s = restored["state"]
    data_state = restored["data"].state if "data" in items else None
    return TrainState(s["step"], s["params"], s["opt_state"]), data_state, step

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
