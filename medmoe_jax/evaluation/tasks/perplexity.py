"""Held-out perplexity per language: the training loss on the run's own validation split."""
from __future__ import annotations

import os

import numpy as np

from medmoe_jax.evaluation import report
from medmoe_jax.evaluation.tasks import heldout
from medmoe_jax.evaluation.tasks.base import ModelRun, Task, figure


class Perplexity(Task):
  name = "perplexity"
  on_baseline = True

  def evaluate(self, m: ModelRun) -> dict:
    p = heldout.heldout_pass(m)
    ppl = p["perplexity"]
    tokens = sum(v["tokens"] for v in ppl.values())
    nll = sum(v["nll"] * v["tokens"] for v in ppl.values()) / max(tokens, 1)
    tok = m.lm.tokenizer
    return {"perplexity": ppl, "nll_overall": nll,
            "perplexity_overall": float(np.exp(min(nll, 700.0))),
            "heldout": {"seq_len": p["seq_len"], "max_batches_per_language": p["max_batches"],
                        "tokenizer": getattr(tok, "name", repr(tok))}}

  def figures(self, entry: dict, fig_dir: str, step: int) -> dict[str, str]:
    if not entry.get("perplexity"):
      return {}
    return figure("perplexity", report.perplexity_figure(
        entry["perplexity"], os.path.join(fig_dir, "perplexity.png"),
        f"Held-out perplexity per language (step {step})"))
