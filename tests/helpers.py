"""Shared test utilities: synthetic packed batches and a model/state builder."""
from __future__ import annotations

import jax
import numpy as np


def packed_batch(batch=8, seq=32, vocab=512, num_langs=20, seed=0):
  """Two documents per row plus 3 padding tokens, one language per document."""
  r = np.random.RandomState(seed)
  half = seq // 2
  seg = np.ones((batch, seq), np.int32)
  seg[:, half:] = 2
  seg[:, -3:] = 0
  pos = np.concatenate([np.arange(half), np.arange(seq - half)])[None].repeat(batch, 0).astype(np.int32)
  lang = np.where(seg == 1, r.randint(0, num_langs, (batch, 1)), r.randint(0, num_langs, (batch, 1)))
  lang = np.where(seg == 0, -1, lang).astype(np.int32)
  return dict(tokens=r.randint(4, vocab, (batch, seq)).astype(np.int32), segment_ids=seg,
              positions=pos, lang_ids=lang, loss_mask=(seg > 0).astype(np.int32))


def build(c, mesh=None, seed=0):
  """(graphdef, state, train_step, mesh) for config c: the Trainer's own jitted step (on_mesh,
  shardings, donation) and initial state, so tests run exactly what training runs. The step
  donates its state argument: use the returned state only once."""
  from medmoe_jax.train import Trainer
  c = c.copy_and_resolve_references()
  c.seed = seed
  trainer = Trainer(c, workdir="", mesh=mesh).setup_step()
  return trainer.graphdef, trainer._init_state(), trainer.train_step, trainer.mesh


def assert_tree_close(got, want, rel, what=""):
  """Each leaf within rel x (its largest |value|) of `want`: a relative bound per tensor that a
  uniform 1% error in any one tensor breaks when rel < 1e-2, while float reassociation (~1e-6
  of the scale) passes."""
  flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
  flat_want = jax.tree.leaves(want)
  assert len(flat_got) == len(flat_want), what
  for (path, g), w in zip(flat_got, flat_want):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    scale = float(np.max(np.abs(w))) if w.size else 0.0
    err = float(np.max(np.abs(g - w))) if w.size else 0.0
    assert err <= rel * scale + 1e-30, (
        f"{what}{jax.tree_util.keystr(path)}: max |diff| {err:.3g} > {rel} x max |want| {scale:.3g}")


def decode_in_steps(model, tokens, segment_ids, positions, lang_ids, prefix: int):
  """Logits [B, S, V] from Transformer.decode: a prefill of the first `prefix` tokens into a fresh
  cache, then one token a step (the generation path). Call inside jit."""
  import jax.numpy as jnp
  from flax import nnx
  b, s = tokens.shape
  cut = lambda a, i, n: jax.lax.dynamic_slice_in_dim(a, i, n, axis=1)
  arrays = (tokens, segment_ids, positions, lang_ids)
  logits, cache, _ = model.decode(*(cut(a, 0, prefix) for a in arrays), model.init_cache(b, s), 0)

  graphdef, state = nnx.split(model)

  def step(carry, t):  # one token at a traced position, as generation runs: compiled once
    cache, state = carry  # the weights ride in the carry: nnx modules cannot cross into scan
    out, cache, _ = nnx.merge(graphdef, state).decode(*(cut(a, t, 1) for a in arrays), cache, t)
    return (cache, state), out[:, 0]

  _, steps = jax.lax.scan(step, (cache, state), jnp.arange(prefix, s))  # [S - prefix, B, V]
  return jnp.concatenate([logits, jnp.moveaxis(steps, 0, 1)], axis=1)


def post_moe_run_config(steps=30):
  """The tiny Post-MoE training run on the embedded sample that the end-to-end tests share."""
  from conftest import load_config
  c = load_config("post_moe")
  c.model.update(dict(d_model=64, num_heads=4, num_kv_heads=2, d_ff=128))
  c.data.update(dict(seq_len=64, batch_size=4))
  c.train.update(dict(steps=steps, log_every=5, checkpoint_every=15, lr=3e-3))
  c.mesh.update(dict(data=-1))
  return c


def small_post_moe_for_flops():
  """post_moe at 3 layers (the last 2 MoE: 7 experts, top-2), batch 2 x 16: the dry-run FLOP
  counts below by hand."""
  from conftest import load_config
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=512, d_model=64, num_layers=3, num_heads=4, num_kv_heads=2, d_ff=96))
  c.data.update(dict(seq_len=16, batch_size=2))
  return c


# small_post_moe_for_flops's train step, per MoE layer (2 of them, 7 experts, top-2) and
# token-slot: 3 SwiGLU matmuls, forward and both gradients; dropless adds the routing-weight
# gradient's [slots, D] dot.
TOKENS, D, F, E, K, MOE_LAYERS = 2 * 16, 64, 96, 7, 2, 2
PER_EXPERT_TOKEN = 3 * 3 * 2 * D * F
COMBINE_WEIGHT_GRAD = 2 * TOKENS * K * D


def tiny_train_flags(steps: int) -> list[str]:
  """`python -m medmoe_jax.train` flags of the tiny Post-MoE run that the kill-and-resume tests
  start as a subprocess: 2 layers (the last MoE), checkpoints every 2 steps, log windows of 3
  (they straddle checkpoints: a resumed window must average the same steps), one device."""
  return [
      "--config=configs/post_moe.py", "--config.model.num_layers=2", "--config.moe.layers=last:1",
      "--config.model.d_model=32", "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
      "--config.model.d_ff=64", "--config.data.seq_len=32", "--config.data.batch_size=8",
      f"--config.train.steps={steps}", "--config.train.checkpoint_every=2",
      "--config.train.log_every=3", "--config.mesh.data=1"]


def metrics_history(workdir):
  """A run's metrics.jsonl records, without the wall-clock dependent throughput."""
  import json
  import os
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    recs = [json.loads(l) for l in f]
  for r in recs:
    r.pop("tokens_per_sec")
  return recs


def final_params(ckpt_dir, step):
  """(step, {"a/b/c": array}) of the parameters saved at `step` in a checkpoint directory."""
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(str(ckpt_dir), item_names=("state", "data"))
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  flat = {}

  def walk(tree, prefix=""):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        flat[prefix + k] = np.asarray(v)
  walk(state["params"])
  return int(state["step"]), flat
