"""The trainer: builds a run from its config (model, optimizer, shardings, jitted step, data,
checkpointer) and runs the training loop. Composes; owns no math.

    Trainer(config, workdir).setup().run()

`setup_step` reads no data and writes no file (the dry run stops there); `setup` adds this
process's data and the checkpointer. The loop (`run`) is one step at a time, and each concern
is a named part: `_stop_for_preemption`, `_count_step` (non-finite handling), `_log`, `_save`,
`_check_final_save`.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from tqdm import tqdm

from medmoe_jax import config as cfg_lib
from medmoe_jax import fileio, log, paths, sharding, upcycle
from medmoe_jax.checkpoint import Checkpointer, abstract_with_shardings
from medmoe_jax.data import corpus
from medmoe_jax.data.tokenizer import load_tokenizer
from medmoe_jax.distributed import barrier, data_shard
from medmoe_jax.errors import ConfigError, InputError
from medmoe_jax.metrics import MetricsWriter, truncate_after
from medmoe_jax.model import Transformer, moe
from medmoe_jax.training import faults, optim
from medmoe_jax.training import step as step_lib
from medmoe_jax.training.metric_window import CHECKPOINT_KEY, MetricWindow

_log = log.get(__name__)


def data_files(c) -> list[str]:
  """The input files of every source of config.data.sources."""
  return [f for spec in cfg_lib.source_specs(c) for f in spec.files()]


@dataclasses.dataclass
class Trainer:
  """Everything a run needs, built from a config."""
  config: object
  workdir: str
  mesh: object = None
  # Where checkpoints go; default <workdir>/checkpoints. May be a gs:// URL shared by all hosts.
  checkpoint_dir: str | None = None

  # --- Building the run.

  def setup(self):
    """Model, optimizer and jitted step (setup_step), then this process's data and the
    checkpointer."""
    self.setup_step()
    faults.check_workdir(self.workdir)  # before the data build and the first compile
    faults.check_free_space(self.workdir, sum(x.size * x.dtype.itemsize
                                              for x in jax.tree.leaves(self.abstract_state)))
    self._check_upcycle_source()
    self.open_checkpointer()  # a damaged or mismatched checkpoint: found before the data build
    self._setup_data()
    if jax.process_count() > 1:
      # Compile, then meet: no process should sit in the first step's collectives while another
      # is still compiling (CPU collectives time out after 30 s).
      self.train_step = self.train_step.lower(*self.abstract_step_inputs()).compile()
      self._init_state = self._init_state.lower().compile()  # its output spans processes too
      barrier("medmoe_jax: train step compiled")
    return self

  def _check_upcycle_source(self):
    """A fresh run that starts from config.upcycle.from: a missing or damaged source fails here,
    before the data build and the compile (a resumed run does not read it)."""
    if not self.run_spec.upcycle_from:
      return
    ckpts = epath.Path(self.checkpoint_dir or os.path.join(self.workdir, "checkpoints"))
    if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
      return
    upcycle.find_step_dir(self.run_spec.upcycle_from)

  def open_checkpointer(self):
    """The checkpointer of self.workdir (or self.checkpoint_dir), its newest intact step found
    (damaged newer ones moved aside) and checked against the config: metadata only, no compute."""
    t = self.run_spec.train
    # Every process writes its own parts of a checkpoint to the same (shared) directory.
    self.checkpointer = Checkpointer(self.checkpoint_dir or os.path.join(self.workdir, "checkpoints"),
                                     keep=t.keep_checkpoints, async_save=t.async_checkpoint)
    if self.checkpointer.set_aside_damaged() is None and self.checkpointer.damaged_steps:
      # Starting over would truncate metrics.jsonl: the user decides (the steps are kept).
      raise self.checkpointer.no_intact_checkpoint_error()
    self.checkpointer.check_compatible(self.abstract_state)
    return self

  def _setup_data(self):
    """The tokenizer and this process's shard of the global batch stream."""
    data = self.run_spec.data
    self.tokenizer = load_tokenizer(data.tokenizer)
    if self.tokenizer.vocab_size > self.spec.vocab_size:
      raise ConfigError(
          f"config.model.vocab_size={self.spec.vocab_size} is smaller than the tokenizer's "
          f"vocabulary ({self.tokenizer.vocab_size}, {data.tokenizer}); raise it")
    # Several processes may share a disk: process 0 builds the dataset, the others then read it.
    multi = jax.process_count() > 1
    if multi and jax.process_index() != 0:
      barrier("medmoe_jax: dataset built")
    shard_index, shard_count = data_shard(self.mesh, data.batch_size)
    try:
      self.dataset = corpus.train_dataset(data, self.tokenizer, shard_index, shard_count)
    except UnicodeDecodeError as e:  # the codec's message names no file
      raise InputError(faults.locate_decode_error(data.files(), e)) from None
    except ValueError as e:  # the data module's messages name file, line and field
      raise InputError(str(e)) from None
    if multi and jax.process_index() == 0:
      barrier("medmoe_jax: dataset built")

  def setup_step(self):
    """Spec, mesh, shardings, optimizer and the jitted train step; reads no data, writes no
    file (the dry run stops here and compiles `train_step` on abstract inputs)."""
    run = self.run_spec = cfg_lib.resolve(
        self.config, workdir=self.workdir,
        num_devices=self.mesh.size if self.mesh is not None else jax.device_count())
    self.spec = run.model
    self.languages = list(run.languages)
    if self.mesh is None:
      self.mesh = sharding.mesh_of_shape(run.mesh_shape)

    # Model and optimizer, initialised directly into their shardings.
    abstract_model = nnx.eval_shape(lambda: Transformer(self.spec, rngs=nnx.Rngs(0)))
    self.graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_shardings = sharding.state_shardings(abstract_params, self.mesh)
    self.tx, self.labels = optim.make_optimizer(run.train, nnx.to_pure_dict(abstract_params),
                                                list(run.train.freeze))

    seed = run.seed

    def init_state():
      model = Transformer(self.spec, rngs=nnx.Rngs(seed))
      params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
      return step_lib.TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

    abstract_state = jax.eval_shape(init_state)
    repl = sharding.replicated(self.mesh)
    opt_shardings = sharding.optimizer_shardings(self.tx.init, abstract_state.params,
                                                 param_shardings, self.mesh)
    self.state_shardings = step_lib.TrainState(repl, param_shardings, opt_shardings)
    self.abstract_state = abstract_with_shardings(abstract_state, self.state_shardings)
    self._init_state = jax.jit(init_state, out_shardings=self.state_shardings)

    train_step = step_lib.make_train_step(self.graphdef, self.tx, step_lib.loss_weights(run.train),
                                          len(self.languages))
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.train_step = jax.jit(sharding.on_mesh(train_step, self.mesh), donate_argnums=0,
                              in_shardings=(self.state_shardings, self.batch_sharding, repl),
                              out_shardings=(self.state_shardings, repl))
    return self

  def abstract_step_inputs(self):
    """(state, batch, rng) as ShapeDtypeStructs with their shardings: train_step's arguments,
    for compiling ahead of time (dry run, multi-process start)."""
    b, s = self.run_spec.data.batch_size, self.run_spec.data.seq_len
    batch = {k: jax.ShapeDtypeStruct((b, s), jnp.int32, sharding=self.batch_sharding)
             for k in ("tokens", "targets", "segment_ids", "positions", "lang_ids", "loss_mask")}
    key = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(self.mesh))
    return self.abstract_state, batch, rng

  def initial_state(self):
    """Restore the latest checkpoint if one exists, else initialise. Returns (state, iterator);
    the restored partial metrics window (if any) is left in self.restored_window."""
    iterator = iter(self.dataset)
    self.restored_window = None
    latest = self.checkpointer.latest_step()
    if latest is None:
      state = self._init_state()
      run = self.run_spec
      if run.upcycle_from:
        # A fresh run that starts from another checkpoint's params (upcycled from a dense model,
        # or as they are), with a fresh optimizer state (Adam's init does not read the values).
        state = state._replace(params=upcycle.initial_params(
            run.upcycle_method, run.upcycle_from, self.spec, state.params, self.mesh,
            self.state_shardings.params, shared_from_dense=run.upcycle_shared_from_dense))
      return state, iterator
    state, data_state, step = self.checkpointer.restore(self.abstract_state)
    data_state = dict(data_state or {})
    self.restored_window = data_state.pop(CHECKPOINT_KEY, None)
    if data_state:
      iterator.set_state(data_state)
    newest = (f", the newest intact one (damaged: {', '.join(map(str, self.checkpointer.damaged_steps))})"
              if self.checkpointer.damaged_steps else "")
    _log.info(f"resuming from checkpoint step {step} in {self.checkpointer.directory}{newest}")
    return state, iterator

  # --- The loop.

  # Settings the loop reads when it starts, not compiled into the step.
  LOOP_SETTINGS = ("log_every", "checkpoint_every", "on_nonfinite")

  def set_loop(self, **settings):
    """Change LOOP_SETTINGS of a set-up trainer (TrainSpec fields); the next `run` uses them."""
    unknown = sorted(set(settings) - set(self.LOOP_SETTINGS))
    if unknown:
      raise ValueError(f"{unknown} are not loop settings ({', '.join(self.LOOP_SETTINGS)}); "
                       "the others are compiled into the step: change the config")
    self.run_spec = dataclasses.replace(
        self.run_spec, train=dataclasses.replace(self.run_spec.train, **settings))
    return self

  def run(self, *, stop_at: int | None = None, progress: bool = True):
    """Train until config.train.steps (or stop_at). Returns the final state.

    Faults (training/faults.py): SIGTERM/SIGINT -> checkpoint at the current step, raise
    Preempted; non-finite loss/grad norm -> raise NonFiniteError ("stop") or skip the update
    ("skip"); a failed save is reported and training goes on, but a failed last save raises
    CheckpointSaveError.
    """
    run, t = self.run_spec, self.run_spec.train  # the loop's policies: see set_loop
    self._write_config()
    guard = faults.PreemptionGuard()
    with guard:  # from here on SIGTERM/SIGINT mean "checkpoint, then stop"
      state, iterator = self.initial_state()
      start = int(jax.device_get(state.step))
      truncate_after(self.workdir, start)
      total = t.steps if stop_at is None else min(t.steps, stop_at)
      rng = jax.random.key(run.seed + 1)
      window = MetricWindow(self.languages, count_skips=t.on_nonfinite == "skip")
      if getattr(self, "restored_window", None):
        window.set_state(self.restored_window)
      log = _Log(self.workdir, run.name, start, total, progress)
      step = start
      # The host never waits on the device between log points: each step's metrics stay on the
      # device until a log step, a save or a stop fetches them (`_fetch`, where non-finite steps
      # are found: before any save, so none is saved), and the next batch is read and sent to
      # the devices while the current step runs.
      self._pending = []
      try:
        if step < total:
          if guard.should_stop(step):
            self._stop_for_preemption(guard, step, state, iterator, window)
          batch = self._next_batch(iterator, log)
        while step < total:
          state, metrics = self.train_step(state, batch, rng)  # returns before the step runs
          step += 1
          self._pending.append((step, metrics))
          if step % t.log_every == 0 or step == total:
            self._fetch(window)
            # The update that made `step` ran at the schedule's value for step - 1 (optax counts
            # updates from 0): the first step's learning rate is warm-up's 0.
            log.write(step, window.summary(), float(self._lr(step - 1)))
          log.bar.update(1)
          if step % t.checkpoint_every == 0 or step == total:
            self._fetch(window)
            self._save(step, state, iterator, window)
          if step < total:
            # Once per step, before its batch is read, as multi-process preemption sync points
            # must be reached; a save or a stop above has recorded the iterator's position.
            if guard.should_stop(step):
              self._stop_for_preemption(guard, step, state, iterator, window)
            batch = self._next_batch(iterator, log)
        self._fetch(window)
        self._check_final_save(step)
      finally:
        log.close()
    return state

  def _write_config(self):
    os.makedirs(self.workdir, exist_ok=True)
    if jax.process_index() == 0:
      fileio.write_atomic(os.path.join(self.workdir, "config.json"), cfg_lib.to_json(self.config))

  def _next_batch(self, iterator, log):
    """The next batch, its transfer to the devices started, its tokens counted."""
    batch = next(iterator)
    log.count_tokens(batch)
    return sharding.global_batch(batch, self.mesh)

  def _fetch(self, window):
    """The metrics of the steps since the last fetch, in step order, into the log window."""
    pending, self._pending = jax.device_get(self._pending), []
    for step, m in pending:
      self._count_step(step, m, window)

  def _stop_for_preemption(self, guard, step, state, iterator, window):
    """SIGTERM/SIGINT arrived: checkpoint this step (unless it already is), then stop."""
    self._fetch(window)
    ckpt = self.checkpointer
    if ckpt.latest_step() != step:
      self._save(step, state, iterator, window)
    if not ckpt.wait() or ckpt.latest_step() != step:
      raise faults.CheckpointSaveError(
          f"{guard.received} at step {step}, but its checkpoint could not be written; "
          f"the last complete checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
    raise faults.Preempted(
        f"{guard.received} at step {step}: checkpoint written to {ckpt.directory}; run "
        "the same command to resume", step)

  def _count_step(self, step, m, window):
    """A step's metrics into the log window; a non-finite step stops the run ("stop": its
    state is never saved) or is counted as skipped ("skip": the jitted step dropped it)."""
    if m.pop("nonfinite") > 0:
      loss, gnorm = float(m["total_loss"]), float(m["grad_norm"])
      if self.run_spec.train.on_nonfinite != "skip":
        ckpt = self.checkpointer
        ckpt.wait()  # let the last good save commit; this step's state is never saved
        latest = ckpt.latest_step()
        raise faults.NonFiniteError(
            faults.nonfinite_message(step, loss, gnorm, latest, ckpt.directory), step, latest)
      window.skipped += 1
      _log.warning(f"step {step}: non-finite loss={loss} grad_norm={gnorm}; update skipped "
                   "(config.train.on_nonfinite='skip')")
    else:
      window.add(m)

  def _save(self, step, state, iterator, window):
    data_state = dict(iterator.get_state())
    data_state[CHECKPOINT_KEY] = window.get_state()  # a resumed log window averages the same steps
    return self.checkpointer.save(step, state, data_state)

  def _check_final_save(self, step):
    ckpt = self.checkpointer
    if not ckpt.wait() or ckpt.latest_step() != step:
      raise faults.CheckpointSaveError(
          f"the checkpoint of the final step {step} could not be written (see above); the "
          f"last complete one is step {ckpt.latest_step()} in {ckpt.directory}; free space "
          "and run the same command again to redo the steps since")

  def _lr(self, step):
    return optim.lr_schedule(self.run_spec.train)(step)

  def close(self):
    self.checkpointer.close()


class _Log:
  """metrics.jsonl / TensorBoard records, the progress bar and tokens per second since the
  last record."""

  def __init__(self, workdir, name, start, total, progress):
    self.writer = MetricsWriter(workdir)
    self.bar = tqdm(total=total, initial=start, disable=not progress or jax.process_index() != 0,
                    desc=name, dynamic_ncols=True)
    self.t_last, self.tokens_since = time.perf_counter(), 0

  def count_tokens(self, batch):
    """This process's real tokens of a batch; every process reads an equal share."""
    self.tokens_since += int(np.sum(batch["segment_ids"] > 0)) * jax.process_count()

  def write(self, step, record, lr):
    dt = time.perf_counter() - self.t_last
    record["tokens_per_sec"] = self.tokens_since / max(dt, 1e-9)
    record["lr"] = lr
    self.writer.write(step, record)
    self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}",
                         tok_s=f"{record['tokens_per_sec']:.0f}")
    self.t_last, self.tokens_since = time.perf_counter(), 0

  def close(self):
    self.bar.close()
    self.writer.close()


def train(c, workdir: str | None = None, *, logdir: str | None = None):
  """`python -m medmoe_jax.train`: build the run, print what it is, train, close. workdir
  defaults to ./workdir/<config.name>; a gs:// workdir keeps checkpoints and (unless
  config.data.data_dir says otherwise) the built datasets there, and the logs in `logdir`
  (process 0's disk). Returns the final state."""
  workdir = paths.absolute(workdir or os.path.join("workdir", c.name))
  checkpoint_dir = None
  if "://" in workdir:  # gs://...: checkpoints and built data shared there; logs local to process 0
    checkpoint_dir = workdir.rstrip("/") + "/checkpoints"
    if not c.data.data_dir:
      c.data.data_dir = workdir.rstrip("/") + "/data"
    workdir = paths.absolute(logdir or os.path.join("/tmp/medmoe_jax", c.name))
  trainer = Trainer(c, workdir, checkpoint_dir=checkpoint_dir).setup()
  lead = jax.process_index() == 0
  if lead:
    _log.info(f"{c.name}: segments {trainer.spec.segments}, mesh {dict(trainer.mesh.shape)}, "
              f"{jax.process_count()} process(es), workdir {workdir}"
              + (f", checkpoints {checkpoint_dir}" if checkpoint_dir else ""))
    for note in (moe.kernel_note(trainer.spec.moe, jax.default_backend())
                 if trainer.spec.moe_layer_indices else None,
                 cpu_allocator_hint(jax.default_backend())):
      if note:
        _log.info(note)
  state = trainer.run()
  trainer.close()
  if lead:
    print(f"done: {trainer.run_spec.train.steps} steps; checkpoints, metrics.jsonl and tensorboard in {workdir}")
  return state


def cpu_allocator_hint(backend: str, environ=os.environ, platform: str = sys.platform):
  """A one-line tip for CPU training on Linux when glibc's huge-page malloc is off, else None.
  glibc then returns XLA's large buffers to the OS after each step and the next step faults
  them in again, page by page; on 2 MB pages the benchmark train step ran 10-25% faster
  (BENCHMARKS.md, "CPU allocator"). Glibc reads the setting at start-up, so it can only be
  suggested, not switched on from here."""
  if backend != "cpu" or not platform.startswith("linux"):
    return None
  if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
    return None
  return ("tip: on CPU, GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment makes training "
          "steps 10-25% faster (glibc >= 2.35; README, 'What a training run does')")
