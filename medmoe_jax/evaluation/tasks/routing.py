"""Routing per language and MoE layer (expert shares, own-expert hit rates, MoE-LPR's expert-0
share), collected in the perplexity pass over held-out text."""
from __future__ import annotations

from medmoe_jax.evaluation import routing as routing_lib
from medmoe_jax.evaluation.tasks import heldout
from medmoe_jax.evaluation.tasks.base import ModelRun, Task


class Routing(Task):
  name = "routing"

  def evaluate(self, m: ModelRun) -> dict:
    if not m.lm.spec.moe_layer_indices:
      return {"routing": {"skipped": "the model has no MoE layers"}}
    p = heldout.heldout_pass(m)
    return {"routing": p["routing"], "dropped_fraction": p["dropped_fraction"]}

  def figures(self, entry: dict, fig_dir: str, step: int) -> dict[str, str]:
    if not entry.get("routing", {}).get("languages"):
      return {}
    return routing_lib.figures(entry["routing"], fig_dir, step=step)
