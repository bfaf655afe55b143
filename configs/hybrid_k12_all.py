"""Apollo-MoE's hybrid-k analysis model: one expert per major language in EVERY layer
(`mlp_only_layers=[]` in ApolloMoE's src/variants/upcycling/hybrid_routing config), 12 experts,
hybrid-k routing, top-2 without renormalisation: configs/hybrid_k12.py with MoE in all layers.
The paper's "Spread Out in the End" figure (where in the network routing becomes
language-specific) is drawn from this model: run the eval job's routing task on it.

  python -m medmoe_jax.train --config=configs/hybrid_k12_all.py [--config.upcycle.from_=DENSE]
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
import importlib.util
import pathlib


def get_config(arg=None):
  # configs/ is not a package: load hybrid_k12.py beside this file.
  spec = importlib.util.spec_from_file_location(
      "hybrid_k12", pathlib.Path(__file__).with_name("hybrid_k12.py"))
  base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(base)
  c = base.get_config(arg)
  c.name = "hybrid_k12_all"
  c.moe.layers = "all"
  return c
