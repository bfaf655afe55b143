"""Apollo-MoE Post-MoE: dense early layers, 7 language-family experts in the last 2 layers,
top-2 without renormalisation, hybrid-k routing (own-family expert forced during training).

  python -m medmoe_jax.train --config=configs/post_moe.py            # tiny, CPU, minutes
  python -m medmoe_jax.train --config=configs/post_moe.py:0.5b       # Qwen2-0.5B shapes
  ... --config.upcycle.from=DIR    # upcycle a dense checkpoint (ours or `python -m medmoe_jax.hf import`)
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_size, base_config
from medmoe_jax.presets import PAPER_TRAINING


def get_config(arg=None):
  c = base_config()
  c.name = "post_moe"
  apply_size(c, arg or "tiny")
  c.moe.layers = "last:2"
  c.moe.num_experts = 7
  c.moe.top_k = 2
  c.moe.language_routing = "hybrid"
  c.languages.table = "apollo50"
  c.languages.assignment = "family"
  c.upcycle.method = "apollo"  # used when upcycle.from is set: every expert a copy of the FFN
  if c.size not in ("tiny", "small"):
    c.data.seq_len = PAPER_TRAINING["seq_len"]
    c.data.batch_size = PAPER_TRAINING["batch_size"]
    c.train.lr = PAPER_TRAINING["lr"]
    c.model.dtype = PAPER_TRAINING["dtype"]
    c.model.remat = PAPER_TRAINING["remat"]
    c.data.tokenizer = ""  # real sizes use the base model's tokenizer (set a path)
    c.train.steps = 20000
    c.train.checkpoint_every = 1000
  return c
