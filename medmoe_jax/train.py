"""Train: `python -m medmoe_jax.train --config=configs/post_moe.py [--workdir=DIR]`.

With no other flags this trains the tiny Post-MoE model on the embedded multilingual sample on a
laptop CPU in minutes. Running the same command again resumes from the last checkpoint.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/post_moe.py", "Config file (Python, get_config).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, metrics; default ./workdir/<config.name>.")


def data_files(c) -> list[str]:
  from medmoe_jax.data import sources
  if c.data.sources == "sample":
    return sources.sample_files()
  files = []
  for pattern in [p.strip() for p in str(c.data.sources).split(",") if p.strip()]:
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
      raise FileNotFoundError(f"config.data.sources: {pattern!r} matches no file")
    files.extend(found)
  return files


def data_dir_for(c, workdir: str) -> str:
  if c.data.data_dir:
    return os.path.expanduser(c.data.data_dir)
  return os.path.join(os.path.dirname(os.path.abspath(workdir)), "data")


@dataclasses.dataclass
class Trainer:
  """Everything a run needs, built from a config. Composes; owns no math."""
  config: object
  workdir: str
  mesh: object = None

  def setup(self):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from medmoe_jax import config as cfg_lib
    from medmoe_jax import sharding
    from medmoe_jax.checkpoint import Checkpointer, abstract_with_shardings
    from medmoe_jax.data import pipeline, sources
    from medmoe_jax.data.tokenizer import load_tokenizer
    from medmoe_jax.model import Transformer
    from medmoe_jax.training import optim, step as step_lib

    c = self.config
    cfg_lib.validate(c, self.mesh.size if self.mesh is not None else jax.device_count())
    self.spec = cfg_lib.model_spec(c)
    self.languages = cfg_lib.language_list(c)
    if self.mesh is None:
      self.mesh = sharding.make_mesh(c)

    # Data.
    self.tokenizer = load_tokenizer(c.data.tokenizer)
    if self.tokenizer.vocab_size > self.spec.vocab_size:
      raise cfg_lib.ConfigError(
          f"config.model.vocab_size={self.spec.vocab_size} is smaller than the tokenizer's "
          f"vocabulary ({self.tokenizer.vocab_size}, {c.data.tokenizer}); raise it")
    splits = sources.build_text_source(data_files(c), data_dir_for(c, self.workdir), "medmoe_text")
    nproc = jax.process_count()
    self.dataset = pipeline.make_lm_dataset(
        splits["train"], languages=self.languages, tokenizer=self.tokenizer,
        seq_len=c.data.seq_len, batch_size=c.data.batch_size // nproc, seed=c.seed,
        temperature=c.data.temperature, shard_index=jax.process_index(), shard_count=nproc,
        replay=cfg_lib.replay(c))

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

    weights = step_lib.LossWeights(c.moe.lb_loss_weight, c.moe.z_loss_weight, c.moe.lpr_loss_weight)
    train_step = step_lib.make_train_step(self.graphdef, self.tx, weights, len(self.languages))
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.train_step = jax.jit(train_step, donate_argnums=0,
                              in_shardings=(self.state_shardings, self.batch_sharding, repl),
                              out_shardings=(self.state_shardings, repl))
    self.checkpointer = Checkpointer(os.path.join(self.workdir, "checkpoints"),
                                     keep=c.train.keep_checkpoints,
                                     async_save=c.train.async_checkpoint)
    return self

  def initial_state(self):
    """Restore the latest checkpoint if one exists, else initialise. Returns (state, iterator)."""
    iterator = iter(self.dataset)
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
    if data_state:
      iterator.set_state(data_state)
    print(f"resuming from checkpoint step {step} in {self.checkpointer.directory}", flush=True)
    return state, iterator

  def run(self, *, stop_at: int | None = None, progress: bool = True):
    """Train until config.train.steps (or stop_at). Returns the final state."""
    import jax
    import numpy as np
    from tqdm import tqdm

    from medmoe_jax import config as cfg_lib
    from medmoe_jax import sharding
    from medmoe_jax.metrics import MetricsWriter, truncate_after

    c = self.config
    os.makedirs(self.workdir, exist_ok=True)
    if jax.process_index() == 0:
      with open(os.path.join(self.workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(cfg_lib.to_json(c))
    state, iterator = self.initial_state()
    start = int(jax.device_get(state.step))
    truncate_after(self.workdir, start)
    writer = MetricsWriter(self.workdir)
    total = int(c.train.steps) if stop_at is None else min(int(c.train.steps), stop_at)
    rng = jax.random.key(int(c.seed) + 1)
    bar = tqdm(total=total, initial=start, disable=not progress or jax.process_index() != 0,
               desc=c.name, dynamic_ncols=True)
    acc = _MetricAccumulator(self.languages)
    t_last, tokens_since = time.perf_counter(), 0
    step = start
    while step < total:
      batch = next(iterator)
      tokens_since += int(np.sum(batch["segment_ids"] > 0)) * jax.process_count()
      state, metrics = self.train_step(state, sharding.global_batch(batch, self.mesh), rng)
      step += 1
      acc.add(metrics)
      if step % c.train.log_every == 0 or step == total:
        record = acc.summary()
        dt = time.perf_counter() - t_last
        record["tokens_per_sec"] = tokens_since / max(dt, 1e-9)
        record["lr"] = float(self._lr(step))
        writer.write(step, record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_sec']:.0f}")
        t_last, tokens_since = time.perf_counter(), 0
      bar.update(1)
      if step % c.train.checkpoint_every == 0 or step == total:
        self.checkpointer.save(step, state, iterator.get_state())
    bar.close()
    self.checkpointer.wait()
    writer.close()
    return state

  def _lr(self, step):
    from medmoe_jax.training.optim import lr_schedule
    return lr_schedule(self.config.train)(step)

  def close(self):
    self.checkpointer.close()


def _shard_like_params(opt_state, param_shardings, default):
  """Adam's mu/nu have the params' tree structure; give each leaf its parameter's sharding."""
  import jax

  flat_params = {tuple(_keys(p)): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}

  def pick(path, leaf):
    keys = tuple(_keys(path))
    for n in range(len(keys)):
      if keys[n:] in flat_params and flat_params[keys[n:]] is not None:
        s = flat_params[keys[n:]]
        if len(s.spec) <= leaf.ndim:
          return s
    return default

  return jax.tree_util.tree_map_with_path(pick, opt_state)


def _keys(path):
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


class _MetricAccumulator:
  """Averages step metrics between log points; per-language loss from token-weighted sums."""

  def __init__(self, languages):
    self.languages = list(languages)
    self.reset()

  def reset(self):
    self.n, self.sums, self.arrays = 0, {}, {}

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
    out["tokens"] = float(a.get("tokens", 0))
    self.reset()
    return out


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  c = FLAGS.config
  workdir = FLAGS.workdir or os.path.join("workdir", c.name)
  trainer = Trainer(c, workdir).setup()
  print(f"{c.name}: segments {trainer.spec.segments}, mesh {dict(trainer.mesh.shape)}, "
        f"workdir {workdir}", flush=True)
  trainer.run()
  trainer.close()
  print(f"done: {c.train.steps} steps; checkpoints, metrics.jsonl and tensorboard in {workdir}")


if __name__ == "__main__":
  app.run(main)
