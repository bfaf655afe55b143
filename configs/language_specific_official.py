"""Apollo-MoE's language-specific variant as its code builds it (ApolloMoE's
src/variants/upcycling/language_specific_routing): MoE in every layer (`mlp_only_layers=[]`),
one expert per major language (12) plus a shared expert, a copy of the dense FFN behind a
sigmoid gate; top-1 without renormalisation. Training: every token goes to its language's
expert with weight 1 (the router gets no gradient from the LM loss there, as in the official
code); inference: the router's top-1 with its softmax weight, no language tag, so the model
exports to Qwen2-MoE.

  python -m medmoe_jax.train --config=configs/language_specific_official.py --config.upcycle.from_=DENSE
configs/language_specific.py is this project's stricter variant (family experts, language
routing at inference too, no shared expert).
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_paper_training, apply_size, base_config
from medmoe_jax.languages import MAJOR_LANGUAGES


def get_config(arg=None):
  c = base_config()
  c.name = "language_specific_official"
  apply_size(c, arg or "tiny")
  c.moe.layers = "all"
  c.moe.num_experts = 12
  c.moe.top_k = 1
  c.moe.norm_topk = False
  c.moe.language_routing = "specific"
  c.moe.shared_expert_d_ff = c.model.get_ref("d_ff")  # a full-size copy, whatever d_ff becomes
  c.moe.shared_expert_gate = True
  c.languages.table = "major12"
  c.languages.assignment = "language"
  c.languages.use = list(MAJOR_LANGUAGES)
  c.upcycle.method = "apollo"
  c.upcycle.shared_expert = "dense"
  apply_paper_training(c)
  return c
