"""Apollo-MoE's language-specific (hard) routing variant: Post-MoE where every token goes to its
language-family expert with weight 1 (top-1), in training and at inference (so the model needs
the language tag at inference; it cannot be exported as plain Qwen2-MoE).

  python -m medmoe_jax.train --config=configs/language_specific.py [--config.upcycle.from_=DENSE]
  ... --config.languages.assignment=language --config.languages.table=major12  # per language
Sizes: tiny (default), small, 0.5b, 1.5b, 7b.
"""
from medmoe_jax.config import apply_paper_training, apply_size, base_config
from medmoe_jax.presets import apollo_moe


def get_config(arg=None):
  c = base_config()
  c.name = "language_specific"
  apply_size(c, arg or "tiny")
  apollo_moe(c, top_k=1, routing="hard")
  apply_paper_training(c)
  return c
