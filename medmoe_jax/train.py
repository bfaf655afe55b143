"""Train: `python -m medmoe_jax.train --config=configs/post_moe.py [--workdir=DIR]`.

With no other flags this trains the tiny Post-MoE model on the embedded multilingual sample on a
laptop CPU in minutes. Running the same command again resumes from the last checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from medmoe_jax import fileio, paths, treepath

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/post_moe.py", "Config file (Python, get_config).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, metrics; default ./workdir/<config.name>. "
                    "A gs:// URL keeps checkpoints there and logs in --logdir.")
# Scaling out (README "Scaling out"; medmoe_jax/distributed.py, medmoe_jax/dryrun.py).
flags.DEFINE_string("logdir", None, "With a gs:// --workdir: local directory for metrics.jsonl, "
                    "TensorBoard and config.json (process 0); default /tmp/medmoe_jax/<config.name>.")
flags.DEFINE_bool("dry_run", False, "Compile the train step for --topology or --num_devices on "
                  "fake CPU devices and report memory, FLOPs and the MFU-bound step time; no training.")
flags.DEFINE_string("topology", None, "Dry run target: v5p-N (TensorCores), v6e-N (chips), h100-N.")
flags.DEFINE_integer("num_devices", None, "Dry run target: N devices (no peak, no step time).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0's "
                    "coordinator (not needed on TPU pods or under SLURM, which are detected).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's id in [0, num_processes).")


def data_files(c) -> list[str]:
  """The input files of every source of config.data.sources."""
  from medmoe_jax.data import corpus
  return [f for spec in corpus.source_specs(c) for f in spec.files()]


@dataclasses.dataclass
class Trainer:
  """Everything a run needs, built from a config. Composes; owns no math."""
  config: object
  workdir: str
  mesh: object = None
  # Where checkpoints go; default <workdir>/checkpoints. May be a gs:// URL shared by all hosts.
  checkpoint_dir: str | None = None

  def setup(self):
    """Model, optimizer and jitted step (setup_step), then this process's data and the
    checkpointer."""
    import jax

    from medmoe_jax import config as cfg_lib
    from medmoe_jax.data import corpus
    from medmoe_jax.distributed import barrier, data_shard
    from medmoe_jax.training import faults
    from medmoe_jax.data.tokenizer import load_tokenizer

    self.setup_step()
    c = self.config
    faults.check_workdir(self.workdir)  # before the data build and the first compile
    faults.check_free_space(self.workdir, sum(x.size * x.dtype.itemsize
                                              for x in jax.tree.leaves(self.abstract_state)))
    self._check_upcycle_source()
    self.open_checkpointer()  # a damaged or mismatched checkpoint: found before the data build

    # Data: each process reads the shard of the global batch its devices hold.
    self.tokenizer = load_tokenizer(c.data.tokenizer)
    if self.tokenizer.vocab_size > self.spec.vocab_size:
      raise cfg_lib.ConfigError(
          f"config.model.vocab_size={self.spec.vocab_size} is smaller than the tokenizer's "
          f"vocabulary ({self.tokenizer.vocab_size}, {c.data.tokenizer}); raise it")
    files = data_files(c)
    # Several processes may share a disk: process 0 builds the dataset, the others then read it.
    multi = jax.process_count() > 1
    if multi and jax.process_index() != 0:
      barrier("medmoe_jax: dataset built")
    shard_index, shard_count = data_shard(self.mesh, c.data.batch_size)
    try:
      self.dataset = corpus.train_dataset(c, self.workdir, self.tokenizer, shard_index, shard_count)
    except UnicodeDecodeError as e:  # the codec's message names no file
      raise faults.InputError(faults.locate_decode_error(files, e)) from None
    except ValueError as e:  # the data module's messages name file, line and field
      raise faults.InputError(str(e)) from None
    if multi and jax.process_index() == 0:
      barrier("medmoe_jax: dataset built")
    if multi:
      # Compile, then meet: no process should sit in the first step's collectives while another
      # is still compiling (CPU collectives time out after 30 s).
      self.train_step = self.train_step.lower(*self.abstract_step_inputs()).compile()
      self._init_state = self._init_state.lower().compile()  # its output spans processes too
      barrier("medmoe_jax: train step compiled")
    return self

  def _check_upcycle_source(self):
    """A fresh run that starts from config.upcycle.from: a missing or damaged source fails here,
    before the data build and the compile (a resumed run does not read it)."""
    up = self.config.get("upcycle", None)
    if up is None or not up["from"]:
      return
    from etils import epath
    ckpts = epath.Path(self.checkpoint_dir or os.path.join(self.workdir, "checkpoints"))
    if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
      return
    from medmoe_jax import upcycle
    upcycle.find_step_dir(up["from"])

  def open_checkpointer(self):
    """The checkpointer of self.workdir (or self.checkpoint_dir), its newest intact step found
    (damaged newer ones moved aside) and checked against the config: metadata only, no compute."""
    from medmoe_jax.checkpoint import Checkpointer
    c = self.config
    # Every process writes its own parts of a checkpoint to the same (shared) directory.
    self.checkpointer = Checkpointer(self.checkpoint_dir or os.path.join(self.workdir, "checkpoints"),
                                     keep=c.train.keep_checkpoints,
                                     async_save=c.train.async_checkpoint)
    if self.checkpointer.set_aside_damaged() is None and self.checkpointer.damaged_steps:
      # Starting over would truncate metrics.jsonl: the user decides (the steps are kept).
      raise self.checkpointer.no_intact_checkpoint_error()
    self.checkpointer.check_compatible(self.abstract_state)
    return self

  def setup_step(self):
    """Spec, mesh, shardings, optimizer and the jitted train step; reads no data, writes no
    file (the dry run stops here and compiles `train_step` on abstract inputs)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from medmoe_jax import config as cfg_lib
    from medmoe_jax import sharding
    from medmoe_jax.checkpoint import abstract_with_shardings
    from medmoe_jax.model import Transformer
    from medmoe_jax.training import optim, step as step_lib

    c = self.config
    cfg_lib.validate(c, self.mesh.size if self.mesh is not None else jax.device_count())
    self.spec = cfg_lib.model_spec(c)
    self.languages = cfg_lib.language_list(c)
    if self.mesh is None:
      self.mesh = sharding.make_mesh(c)

    # Model and optimizer, initialised directly into their shardings.
    abstract_model = nnx.eval_shape(lambda: Transformer(self.spec, rngs=nnx.Rngs(0)))
    self.graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
    param_shardings = sharding.state_shardings(abstract_params, self.mesh)
    freeze = [p.strip() for p in str(c.train.freeze).split(",") if p.strip()]
    self.tx, self.labels = optim.make_optimizer(c.train, nnx.to_pure_dict(abstract_params), freeze)

    seed = int(c.seed)

    def init_state():
      model = Transformer(self.spec, rngs=nnx.Rngs(seed))
      params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
      return step_lib.TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

    abstract_state = jax.eval_shape(init_state)
    repl = sharding.replicated(self.mesh)
    # Optimizer moments mirror their parameter's sharding (matched by tree path suffix).
    opt_shardings = _shard_like_params(abstract_state.opt_state, param_shardings, repl)
    self.state_shardings = step_lib.TrainState(repl, param_shardings, opt_shardings)
    self.abstract_state = abstract_with_shardings(abstract_state, self.state_shardings)
    self._init_state = jax.jit(init_state, out_shardings=self.state_shardings)


    weights = step_lib.loss_weights(c)
    train_step = step_lib.make_train_step(self.graphdef, self.tx, weights, len(self.languages))
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.train_step = jax.jit(sharding.on_mesh(train_step, self.mesh), donate_argnums=0,
                              in_shardings=(self.state_shardings, self.batch_sharding, repl),
                              out_shardings=(self.state_shardings, repl))
    return self

  def abstract_step_inputs(self):
    """(state, batch, rng) as ShapeDtypeStructs with their shardings: train_step's arguments,
    for compiling ahead of time (dry run, multi-process start)."""
    import jax
    import jax.numpy as jnp

    from medmoe_jax import sharding
    b, s = int(self.config.data.batch_size), int(self.config.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct((b, s), jnp.int32, sharding=self.batch_sharding)
             for k in ("tokens", "segment_ids", "positions", "lang_ids", "loss_mask")}
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
      up = self.config.get("upcycle", None)
      if up is not None and up["from"]:
        # A fresh run that starts from another checkpoint's params (upcycled from a dense model,
        # or as they are), with a fresh optimizer state (Adam's init does not read the values).
        from medmoe_jax import upcycle
        state = state._replace(params=upcycle.initial_params(
            self.config, self.spec, state.params, self.mesh, self.state_shardings.params))
      return state, iterator
    state, data_state, step = self.checkpointer.restore(self.abstract_state)
    data_state = dict(data_state or {})
    self.restored_window = data_state.pop(_WINDOW_KEY, None)
    if data_state:
      iterator.set_state(data_state)
    newest = (f", the newest intact one (damaged: {', '.join(map(str, self.checkpointer.damaged_steps))})"
              if self.checkpointer.damaged_steps else "")
    print(f"resuming from checkpoint step {step} in {self.checkpointer.directory}{newest}",
          flush=True)
    return state, iterator

  def run(self, *, stop_at: int | None = None, progress: bool = True):
    """Train until config.train.steps (or stop_at). Returns the final state.

    Faults (training/faults.py): SIGTERM/SIGINT -> checkpoint at the current step, raise
    Preempted; non-finite loss/grad norm -> raise NonFiniteError ("stop") or skip the update
    ("skip"); a failed save is reported and training goes on, but a failed last save raises
    CheckpointSaveError.
    """
    import jax
    import numpy as np
    from tqdm import tqdm

    from medmoe_jax import config as cfg_lib
    from medmoe_jax import sharding
    from medmoe_jax.metrics import MetricsWriter, truncate_after
    from medmoe_jax.training import faults

    c = self.config
    os.makedirs(self.workdir, exist_ok=True)
    if jax.process_index() == 0:
      fileio.write_atomic(os.path.join(self.workdir, "config.json"), cfg_lib.to_json(c))
    guard = faults.PreemptionGuard()
    with guard:  # from here on SIGTERM/SIGINT mean "checkpoint, then stop"
      state, iterator = self.initial_state()
      start = int(jax.device_get(state.step))
      truncate_after(self.workdir, start)
      writer = MetricsWriter(self.workdir)
      total = int(c.train.steps) if stop_at is None else min(int(c.train.steps), stop_at)
      rng = jax.random.key(int(c.seed) + 1)
      bar = tqdm(total=total, initial=start, disable=not progress or jax.process_index() != 0,
                 desc=c.name, dynamic_ncols=True)
      acc = _MetricAccumulator(self.languages, count_skips=c.train.on_nonfinite == "skip")
      if getattr(self, "restored_window", None):
        acc.set_state(self.restored_window)
      ckpt = self.checkpointer
      t_last, tokens_since = time.perf_counter(), 0
      step = start
      try:
        while step < total:
          if guard.should_stop(step):
            if ckpt.latest_step() != step:
              self._save(step, state, iterator, acc)
            if not ckpt.wait() or ckpt.latest_step() != step:
              raise faults.CheckpointSaveError(
                  f"{guard.received} at step {step}, but its checkpoint could not be written; "
                  f"the last complete checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
            raise faults.Preempted(
                f"{guard.received} at step {step}: checkpoint written to {ckpt.directory}; run "
                "the same command to resume", step)
          batch = next(iterator)
          tokens_since += int(np.sum(batch["segment_ids"] > 0)) * jax.process_count()
          state, metrics = self.train_step(state, sharding.global_batch(batch, self.mesh), rng)
          step += 1
          m = jax.device_get(metrics)  # the one host sync per step
          if m.pop("nonfinite") > 0:
            loss, gnorm = float(m["total_loss"]), float(m["grad_norm"])
            if c.train.on_nonfinite != "skip":
              ckpt.wait()  # let the last good save commit; this step's state is never saved
              latest = ckpt.latest_step()
              raise faults.NonFiniteError(
                  faults.nonfinite_message(step, loss, gnorm, latest, ckpt.directory), step, latest)
            acc.skipped += 1
            print(f"step {step}: non-finite loss={loss} grad_norm={gnorm}; update skipped "
                  "(config.train.on_nonfinite='skip')", file=sys.stderr, flush=True)
          else:
            acc.add(m)
          if step % c.train.log_every == 0 or step == total:
            record = acc.summary()
            dt = time.perf_counter() - t_last
            record["tokens_per_sec"] = tokens_since / max(dt, 1e-9)
            # The update that made `step` ran at the schedule's value for step - 1 (optax counts
            # updates from 0): the first step's learning rate is warm-up's 0.
            record["lr"] = float(self._lr(step - 1))
            writer.write(step, record)
            bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}",
                            tok_s=f"{record['tokens_per_sec']:.0f}")
            t_last, tokens_since = time.perf_counter(), 0
          bar.update(1)
          if step % c.train.checkpoint_every == 0 or step == total:
            self._save(step, state, iterator, acc)
        if not ckpt.wait() or ckpt.latest_step() != step:
          raise faults.CheckpointSaveError(
              f"the checkpoint of the final step {step} could not be written (see above); the "
              f"last complete one is step {ckpt.latest_step()} in {ckpt.directory}; free space "
              "and run the same command again to redo the steps since")
      finally:
        bar.close()
        writer.close()
    return state

  def _save(self, step, state, iterator, acc):
    data_state = dict(iterator.get_state())
    data_state[_WINDOW_KEY] = acc.get_state()  # so a resumed log window averages the same steps
    return self.checkpointer.save(step, state, data_state)

  def _lr(self, step):
    from medmoe_jax.training.optim import lr_schedule
    return lr_schedule(self.config.train)(step)

  def close(self):
    self.checkpointer.close()


_WINDOW_KEY = "_metrics_window"  # reserved key in the checkpoint's data item


def _shard_like_params(opt_state, param_shardings, default):
  """Adam's mu/nu have the params' tree structure; give each leaf its parameter's sharding."""
  import jax

  flat_params = {tuple(treepath.path_keys(p)): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

  def pick(path, leaf):
    keys = tuple(treepath.path_keys(path))
    for n in range(len(keys)):
      if keys[n:] in flat_params and flat_params[keys[n:]] is not None:
        s = flat_params[keys[n:]]
        if len(s.spec) <= leaf.ndim:
          return s
    return default

  return jax.tree_util.tree_map_with_path(pick, opt_state)


class _MetricAccumulator:
  """Averages step metrics between log points; per-language loss from token-weighted sums.
  Its state goes into checkpoints, so a run resumed mid-window logs what an uninterrupted one
  would. Skipped (non-finite) steps are counted, not averaged."""

  def __init__(self, languages, count_skips: bool = False):
    self.languages = list(languages)
    self.count_skips = count_skips
    self.reset()

  def reset(self):
    self.n, self.sums, self.arrays, self.skipped = 0, {}, {}, 0

  def get_state(self) -> dict:
    import numpy as np
    return {"n": self.n, "skipped": self.skipped,
            "arrays": {k: np.asarray(v, np.float64).tolist() for k, v in self.arrays.items()}}

  def set_state(self, s: dict) -> None:
    import numpy as np
    self.n, self.skipped = int(s["n"]), int(s.get("skipped", 0))
    self.arrays = {k: np.asarray(v, np.float64) for k, v in s["arrays"].items()}

  def add(self, metrics):
    import jax
    import numpy as np
    m = jax.device_get(metrics)
    self.n += 1
    for k, v in m.items():
      a = np.asarray(v, dtype=np.float64)
      self.arrays[k] = self.arrays.get(k, 0) + a

  def summary(self) -> dict:
    import numpy as np
    a, n = self.arrays, max(self.n, 1)
    out = {}
    for k in ("loss", "total_loss", "grad_norm", "lb_loss", "z_loss", "lpr_loss"):
      if k in a:
        out[k] = float(a[k] / n)
    if "lang_nll_sum" in a:
      out["lang_loss"] = {l: float(a["lang_nll_sum"][i] / a["lang_tokens"][i])
                          for i, l in enumerate(self.languages) if a["lang_tokens"][i] > 0}
    if "expert_load" in a:
      load = a["expert_load"] / n  # [moe_layers, E]
      out["expert_load"] = {f"layer{li}": [round(float(x), 4) for x in row] for li, row in enumerate(load)}
      out["router_entropy"] = [float(x) for x in a["router_entropy"] / n]
      out["dropped_fraction"] = float(np.mean(a["dropped_fraction"] / n))
    if "lang_own_hits" in a and "moe_lang_tokens" in a:
      hits, toks = a["lang_own_hits"], a["moe_lang_tokens"]  # [moe_layers, L]
      out["own_expert_rate"] = {
          l: [round(float(hits[j, i] / toks[j, i]), 4) for j in range(hits.shape[0])]
          for i, l in enumerate(self.languages) if toks[0, i] > 0}
    if "expert0_prob_sum" in a:
      # MoE-LPR: mean router probability of expert 0 on original-language tokens, per MoE layer.
      p0, n0 = a["expert0_prob_sum"], a["original_tokens"]
      out["expert0_prob_original"] = [round(float(p / t), 5) if t > 0 else None
                                      for p, t in zip(p0, n0)]
    out["tokens"] = float(a.get("tokens", 0))
    if self.count_skips:
      out["skipped_steps"] = self.skipped
    self.reset()
    return out


def cpu_allocator_hint(backend: str, environ=os.environ, platform: str = sys.platform):
  """A one-line tip for CPU training on Linux when glibc's huge-page malloc is off, else None.
  glibc then returns XLA's large buffers to the OS after each step and the next step faults
  them in again, page by page; on 2 MB pages the benchmark train step ran 10-25% faster
  (BENCHMARKS.md, "Fifth session"). Glibc reads the setting at start-up, so it can only be
  suggested, not switched on from here."""
  if backend != "cpu" or not platform.startswith("linux"):
    return None
  if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
    return None
  return ("tip: on CPU, GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment makes training "
          "steps 10-25% faster (glibc >= 2.35; README, 'What a training run does')")


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  c = FLAGS.config
  paths.resolve_config_paths(c)  # relative paths mean: relative to where the command runs
  if FLAGS.dry_run:  # before anything starts JAX: the dry run sets up fake devices
    from medmoe_jax import dryrun
    raise SystemExit(dryrun.main(c, FLAGS.topology, FLAGS.num_devices, Trainer))
  from medmoe_jax import distributed
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax
  workdir = paths.absolute(FLAGS.workdir or os.path.join("workdir", c.name))
  checkpoint_dir = None
  if "://" in workdir:  # gs://...: checkpoints shared there; logs local to process 0
    checkpoint_dir = workdir.rstrip("/") + "/checkpoints"
    workdir = paths.absolute(FLAGS.logdir or os.path.join("/tmp/medmoe_jax", c.name))
  trainer = Trainer(c, workdir, checkpoint_dir=checkpoint_dir).setup()
  lead = jax.process_index() == 0
  if lead:
    print(f"{c.name}: segments {trainer.spec.segments}, mesh {dict(trainer.mesh.shape)}, "
          f"{jax.process_count()} process(es), workdir {workdir}"
          + (f", checkpoints {checkpoint_dir}" if checkpoint_dir else ""), flush=True)
    if trainer.spec.moe_layer_indices:
      from medmoe_jax.model import moe
      note = moe.kernel_note(trainer.spec.moe, jax.default_backend())
      if note:
        print(note, flush=True)
    hint = cpu_allocator_hint(jax.default_backend())
    if hint:
      print(hint, flush=True)
  trainer.run()
  trainer.close()
  if lead:
    print(f"done: {c.train.steps} steps; checkpoints, metrics.jsonl and tensorboard in {workdir}")


if __name__ == "__main__":
  from medmoe_jax.training.faults import run_absl
  run_absl(main)
