"""Apollo-MoE's hybrid-k analysis model: one expert per major language in EVERY layer
(`mlp_only_layers=[]` in ApolloMoE's src/variants/upcycling/hybrid_routing config), 12 experts,
hybrid-k routing, top-2 without renormalisation. The paper's "Spread Out in the End" figure (where
in the network routing becomes language-specific) is drawn from this model: run the eval job's
routing task on it.

  python -m medmoe_jax.train --config=configs/hybrid_k12_all.py [--config.upcycle.from_=DENSE]
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_paper_training, apply_size, base_config
from medmoe_jax.languages import MAJOR_LANGUAGES


def get_config(arg=None):
  c = base_config()
  c.name = "hybrid_k12_all"
  apply_size(c, arg or "tiny")
  c.moe.layers = "all"
  c.moe.num_experts = 12
  c.moe.top_k = 2
  c.moe.language_routing = "hybrid"
  c.languages.table = "major12"
  c.languages.assignment = "language"
  c.languages.use = list(MAJOR_LANGUAGES)
  c.upcycle.method = "apollo"
  apply_paper_training(c)
  return c
