"""Apollo-MoE's 12-language experiments: Post-MoE with one expert per major language
(ar de en es fr hi it ja ko pt ru zh), hybrid-k routing, top-2 without renormalisation.

  python -m medmoe_jax.train --config=configs/hybrid_k12.py [--config.upcycle.from_=DENSE]
MoE in the last 2 layers; configs/hybrid_k12_all.py is the analysis model with MoE in all layers.
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_paper_training, apply_size, base_config
from medmoe_jax.languages import MAJOR_LANGUAGES
from medmoe_jax.presets import apollo_moe


def get_config(arg=None):
  c = base_config()
  c.name = "hybrid_k12"
  apply_size(c, arg or "tiny")
  apollo_moe(c, num_experts=12, table="major12", assignment="language")
  c.languages.use = list(MAJOR_LANGUAGES)
  apply_paper_training(c)
  return c
