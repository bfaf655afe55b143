"""Experiments that reproduce the papers' claims in small, on the embedded sample, one command each.

  python -m medmoe_jax.experiments.expand --workdir=OUT    # dense base -> 4 ways to add languages
"""
