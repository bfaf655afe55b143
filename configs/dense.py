"""Dense baseline: the same decoder with every layer dense (config.moe.layers="none").

  python -m medmoe_jax.train --config=configs/dense.py
"""
from medmoe_jax.config import apply_size, base_config
from medmoe_jax.presets import PAPER_TRAINING


def get_config(arg=None):
  c = base_config()
  c.name = "dense"
  apply_size(c, arg or "tiny")
  c.moe.layers = "none"
  c.moe.language_routing = "none"
  if c.size not in ("tiny", "small"):
    c.data.seq_len = PAPER_TRAINING["seq_len"]
    c.data.batch_size = PAPER_TRAINING["batch_size"]
    c.train.lr = PAPER_TRAINING["lr"]
    c.model.dtype = PAPER_TRAINING["dtype"]
    c.model.remat = PAPER_TRAINING["remat"]
    c.data.tokenizer = ""
  return c
