"""Apollo-MoE's 12-language experiments: Post-MoE with one expert per major language
(ar de en es fr hi it ja ko pt ru zh), hybrid-k routing, top-2 without renormalisation.

  python -m medmoe_jax.train --config=configs/hybrid_k12.py [--config.upcycle.from_=DENSE]
MoE in the last 2 layers; configs/hybrid_k12_all.py is the analysis model with MoE in all layers.
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_paper_training, apply_size, base_config
from medmoe_jax.languages import MAJOR_LANGUAGES


def get_config(arg=None):
  c = base_config()
  c.name = "hybrid_k12"
  apply_size(c, arg or "tiny")
  c.moe.layers = "last:2"
  c.moe.num_experts = 12
  c.moe.top_k = 2
  c.moe.language_routing = "hybrid"
  c.languages.table = "major12"
  c.languages.assignment = "language"
  c.languages.use = list(MAJOR_LANGUAGES)
  c.upcycle.method = "apollo"
  apply_paper_training(c)
  return c
