"""MoE-LPR stage 2 (review with language-priors routing): only the routers train, from the
stage-1 checkpoint (params only, fresh optimizer), on new-language text mixed with replay of the
original languages: the first 50K documents of every language, mixed by count, as the official
script draws them (`data.max_docs_per_language`; `data.replay_share` fixes a share instead).
The LPR loss (0.1 x -log p_router(expert 0) over original-language tokens) teaches the routers
to send the original languages to the frozen original FFN; no load-balancing loss. What both
stages share: presets.moe_lpr.

  python -m medmoe_jax.train --config=configs/moe_lpr_stage2.py  # from workdir/moe_lpr_stage1
  ... --config.upcycle.from_=DIR --config.data.replay_share=0.2   # a fixed replay share
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_size, base_config
from medmoe_jax.presets import moe_lpr


def get_config(arg=None):
  c = base_config()
  c.name = "moe_lpr_stage2"
  apply_size(c, arg or "tiny")
  moe_lpr(c, stage=2)  # stage 1's routers are loaded; their init is kept for the record
  c.moe.lb_loss_weight = 0.0
  c.moe.lpr_loss_weight = 0.1
  # Start from stage 1's params as they are (same model), with a fresh optimizer.
  c.upcycle.method = "none"
  c.upcycle["from"] = "workdir/moe_lpr_stage1"
  c.train.freeze = "preset:lpr_stage2"  # routers only
  # As the official stage-2 script draws it: the first 50K documents (--max_samples 50000) of
  # every dataset, new and original languages alike, concatenated and shuffled: a language's
  # share is its document count (temperature 1), no separate replay share. Set
  # data.replay_share in (0, 1) to fix the original languages' share instead.
  c.data.max_docs_per_language = 50000
  c.data.temperature = 1.0
  c.data.replay_share = 0.0
  c.train.steps = 100
  if c.size not in ("tiny", "small"):
    c.data.seq_len = 512
    c.train.steps = 2000
    c.train.checkpoint_every = 500
  return c
