"""MoE-LPR stage 1 (post-pretraining): every layer's FFN becomes an MoE whose expert 0 is the
original FFN (frozen); the new experts (copies of it) and the routers train, with load balancing
0.01 in Hugging Face's units (the official script's), on new-language text only. Top-2 of 4
experts, renormalised. What both stages share: presets.moe_lpr.

  python -m medmoe_jax.train --config=configs/dense.py                # the base model (or import one)
  python -m medmoe_jax.train --config=configs/moe_lpr_stage1.py       # upcycles workdir/dense
  python -m medmoe_jax.train --config=configs/moe_lpr_stage2.py       # review with LPR
Sizes: tiny (default), small, 0.5b, 1.5b, 7b (Qwen2 shapes; the paper used Qwen1.5-1.8B with new
languages el, hu, tr and original en, zh, es: the real sizes select those, bring their data).
"""
from medmoe_jax.config import apply_size, base_config
from medmoe_jax.presets import moe_lpr


def get_config(arg=None):
  c = base_config()
  c.name = "moe_lpr_stage1"
  apply_size(c, arg or "tiny")
  moe_lpr(c, stage=1)
  # 0.01 as the official stage-1 script (--aux_loss_coef 0.01), in Hugging Face's units (its
  # load_balancing_loss_func, summed over the k choices): the trainer applies 0.01 x top_k to
  # our per-choice lb_loss, i.e. 0.02 at top-2.
  c.moe.lb_loss_weight = 0.01
  c.moe.lb_loss_units = "hf"
  c.upcycle.method = "lpr"
  c.upcycle["from"] = "workdir/dense"
  # Only the new experts and the routers train; expert 0 (the original FFN) is frozen.
  c.train.freeze = "preset:lpr_stage1"
  if c.size not in ("tiny", "small"):
    c.data.seq_len = 1024
    c.train.steps = 20000
    c.train.checkpoint_every = 1000
  return c
