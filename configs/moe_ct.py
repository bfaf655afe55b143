"""MoE-CT (our interpretation): the base model is frozen; M MoE blocks appended after its last
block are trained, and their output is fused with the base hidden state by a learned per-token
gate that starts closed, so the model equals the base model at step 0 and nothing is lost before
training starts. The paper publishes neither the attachment point, the gate formula nor the
expert count; see README "Methods".

  python -m medmoe_jax.train --config=configs/dense.py     # the base model (or import one)
  python -m medmoe_jax.train --config=configs/moe_ct.py    # appends to workdir/dense
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_paper_training, apply_size, base_config


def get_config(arg=None):
  c = base_config()
  c.name = "moe_ct"
  apply_size(c, arg or "tiny")
  c.moe.layers = "none"      # every base layer stays dense (and frozen)
  c.moe.appended = 2         # M appended MoE blocks
  c.moe.num_experts = 4
  c.moe.top_k = 2
  c.moe.norm_topk = True
  c.moe.language_routing = "none"
  c.upcycle.method = "ct"
  c.upcycle["from"] = "workdir/dense"
  c.train.freeze = "preset:ct"
  apply_paper_training(c)
  return c
