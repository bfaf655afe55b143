"""The one pass over the run's held-out text that the perplexity and routing tasks share: per
language perplexity, and, when the routing task evaluates a model with MoE layers, its routing."""
from __future__ import annotations

import os

from medmoe_jax.evaluation import perplexity
from medmoe_jax.evaluation import routing as routing_lib
from medmoe_jax.evaluation.tasks.base import ModelRun


def source(ev, run):
  """The run's held-out split, built once per evaluation under config.perplexity.data_dir
  (default <workdir>/data); a baseline reads the model's."""
  data_dir = ev.spec.heldout.data_dir or os.path.join(ev.out, "data")
  return ev.once("heldout_source",
                 lambda: perplexity.heldout_source(run.data, os.path.expanduser(data_dir)))


def heldout_pass(m: ModelRun) -> dict:
  """{"perplexity", "routing" and "dropped_fraction" (when collected), "seq_len",
  "max_batches"} of the model m.lm, computed once per model."""
  return m.once("heldout_pass", lambda: _run(m))


def _run(m: ModelRun) -> dict:
  spec, lm = m.ev.spec, m.lm
  src = source(m.ev, lm.run)
  langs = perplexity.heldout_languages(src, m.ppl_languages or list(spec.languages)
                                       or lm.languages)
  out = {"seq_len": spec.heldout.seq_len or lm.run.data.seq_len,
         "max_batches": spec.heldout.max_batches}
  bar = m.ev.bar(None, f"step {lm.step}: held-out text")
  if "routing" in m.names and lm.spec.moe_layer_indices:
    out["perplexity"], out["routing"], out["dropped_fraction"] = routing_lib.analyze(
        lm, src, langs, seq_len=out["seq_len"], max_batches=out["max_batches"], progress=bar)
  else:
    out["perplexity"] = perplexity.evaluate(
        lm.token_scores, src, languages=langs,
        model_lang_ids=[lm.lang_index(l) for l in langs], tokenizer=lm.tokenizer,
        seq_len=out["seq_len"], batch_size=lm.batch_size, max_batches=out["max_batches"],
        progress=bar)
  bar.close()
  return out
