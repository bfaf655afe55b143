"""Apollo-MoE Post-MoE: dense early layers, 7 language-family experts in the last 2 layers,
top-2 without renormalisation, hybrid-k routing (own-family expert forced during training).

  python -m medmoe_jax.train --config=configs/post_moe.py            # tiny, CPU, minutes
  python -m medmoe_jax.train --config=configs/post_moe.py:0.5b       # Qwen2-0.5B shapes
  ... --config.upcycle.from_=DIR   # upcycle a dense checkpoint (ours or `python -m medmoe_jax.hf import`)
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_paper_training, apply_size, base_config
from medmoe_jax.presets import apollo_moe


def get_config(arg=None):
  c = base_config()
  c.name = "post_moe"
  apply_size(c, arg or "tiny")
  apollo_moe(c)  # 7 family experts, top-2 not renormalised, hybrid-k
  apply_paper_training(c)
  return c
