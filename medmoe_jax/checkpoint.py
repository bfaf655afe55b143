"""Orbax checkpoints: train state + data-iterator state, async, restorable onto any mesh.

Layout: <workdir>/checkpoints/<step>/{state,data}. Orbax writes each step to a temporary
directory and renames it when complete, so a half-written step is never picked up.
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from medmoe_jax.training.step import TrainState


def _as_dict(state: TrainState) -> dict:
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    # read_only: for readers beside a running training job (evaluation): never creates, deletes
    # or cleans up anything in `directory`.
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                           save_interval_steps=0 if read_only else 1,
                                           create=not read_only,
                                           enable_async_checkpointing=async_save,
                                           read_only=read_only)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: TrainState, data_state: dict | None, *, force=False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(_as_dict(state)),
                              data=ocp.args.JsonSave(data_state or {}))
    return self._mngr.save(step, args=args, force=force)

  def restore(self, abstract_state: TrainState, step: int | None = None):
    """abstract_state: TrainState of jax.ShapeDtypeStruct carrying the target shardings (so a
    checkpoint written on one mesh restores onto another). Returns (state, data_state, step)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_as_dict(abstract_state)),
        data=ocp.args.JsonRestore()))
    s = restored["state"]
    return TrainState(s["step"], s["params"], s["opt_state"]), restored["data"], step

  def restore_params(self, abstract_params, step: int | None = None):
    """Only the parameters of a train state (no optimizer state, no data iterator): what
    evaluation needs. abstract_params: pure-dict tree of jax.ShapeDtypeStruct with target
    shardings. Returns (params, step)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    if step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"available steps: {self.all_steps()}")
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
    restored = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, restore_args={"params": restore_args},
        partial_restore=True)))
    return restored["state"]["params"], step

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


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
      raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
  return ml_collections.ConfigDict(data)


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
