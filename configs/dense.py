"""Dense baseline: the same decoder with every layer dense (config.moe.layers="none").

  python -m medmoe_jax.train --config=configs/dense.py
"""
from medmoe_jax.config import apply_paper_training, apply_size, base_config


def get_config(arg=None):
  c = base_config()
  c.name = "dense"
  apply_size(c, arg or "tiny")
  c.moe.layers = "none"
  c.moe.language_routing = "none"
  apply_paper_training(c)
  return c
