"""The train step with the loss on full float32 logits (optax) against the chunked LM head +
cross-entropy (model/chunked_head.py), side by side in one process, alternating.

    python bench/loss_ab.py                 # bench/train_step.py's Post-MoE shape, batch 8 x 512
    python bench/loss_ab.py --chunks 512,128

"full" is the loss as computed before chunking ([B, S, V] logits, then
optax.softmax_cross_entropy_with_integer_labels); "chunk=N" is the trainer's loss with
config.model.loss_chunk=N (N >= seq: one chunk, whose logits are kept for the backward pass;
N < seq: the logits are recomputed per chunk in the backward pass). Prints one JSON line:
median step seconds and the spread (min, max) of each, over alternating repetitions.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import emit, machine_info, median_seconds, random_batch  # noqa: E402
from bench.train_step import MOE_LAST, NUM_EXPERTS, SHAPE, TOP_K  # noqa: E402


def full_logits_nll(self, h, targets):
  """Transformer.token_nll as it was before chunking: [B, S, V] float32 logits, then optax."""
  import optax
  return optax.softmax_cross_entropy_with_integer_labels(self.logits(h), targets)


def build(loss: str, batch: int, seq: int):
  import jax

  from medmoe_jax import config as cfg_lib
  from medmoe_jax.training import step as step_lib
  c = cfg_lib.base_config()
  c.model.update(SHAPE)
  if loss != "full":
    c.model.loss_chunk = int(loss)
  c.moe.update(dict(layers=f"last:{MOE_LAST}", num_experts=NUM_EXPERTS, top_k=TOP_K))
  spec = cfg_lib.model_spec(c)
  graphdef, state, tx = step_lib.init_train_state(spec, c.train, seed=0)
  train_step = step_lib.make_train_step(graphdef, tx, step_lib.LossWeights(),
                                        len(cfg_lib.language_list(c)))
  b = random_batch(batch, seq, SHAPE["vocab_size"])
  rng = jax.random.key(0)
  step = jax.jit(train_step, donate_argnums=0)
  from medmoe_jax.model import Transformer
  original = Transformer.token_nll
  if loss == "full":  # traced on the first call below: the old loss stands in for the new
    Transformer.token_nll = full_logits_nll
  try:
    state, m = step(state, b, rng)
    jax.block_until_ready(m["loss"])
  finally:
    Transformer.token_nll = original
  holder = {"state": state}

  def run():
    holder["state"], m = step(holder["state"], b, rng)
    jax.block_until_ready(m["loss"])

  return run, float(m["loss"])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--chunks", default="512,128", help="config.model.loss_chunk values to time")
  p.add_argument("--reps", type=int, default=5, help="alternating repetitions")
  p.add_argument("--steps", type=int, default=3, help="train steps per timed repetition")
  args = p.parse_args()
  variants = ["full"] + [x.strip() for x in args.chunks.split(",") if x.strip()]
  runs, first_loss = {}, {}
  for v in variants:
    runs[v], first_loss[v] = build(v, args.batch, args.seq)
  times = {v: [] for v in variants}
  for _ in range(args.reps):  # alternate, so drift hits every variant alike
    for v in variants:
      times[v].append(median_seconds(runs[v], args.steps))
  emit({"bench": "loss_ab", "batch": args.batch, "seq": args.seq,
        "median_step_s": {v: round(statistics.median(t), 4) for v, t in times.items()},
        "min_max_step_s": {v: [round(min(t), 4), round(max(t), 4)] for v, t in times.items()},
        "first_step_loss": first_loss, **machine_info()})


if __name__ == "__main__":
  main()
