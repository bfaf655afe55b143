"""Forgetting: the model's perplexity and accuracy against a baseline checkpoint's
(config.baseline_checkpoint), per language, original languages apart from new ones. Runs when a
baseline is given; the baseline is evaluated by the tasks that run on it (on_baseline), once,
and kept in results.json across steps and reruns."""
from __future__ import annotations

import os

from medmoe_jax.evaluation import forgetting
from medmoe_jax.evaluation.lm import resolve_checkpoint
from medmoe_jax.evaluation.tasks.base import ModelRun, Task, csv_list


def _tokenizer_name(lm) -> str:
  return getattr(lm.tokenizer, "name", repr(lm.tokenizer))


class Forgetting(Task):
  name = "forgetting"
  named = False  # chosen by config.baseline_checkpoint

  @classmethod
  def selected(cls, c, names: list[str]) -> bool:
    return bool(c.baseline_checkpoint)

  def baseline(self, m: ModelRun) -> dict:
    """The baseline's numbers (cached in results.json under "baseline", keyed by what made
    them)."""
    c = self.c
    b_dir, b_step = resolve_checkpoint(c.baseline_checkpoint)
    step = b_step if c.baseline_step < 0 else int(c.baseline_step)
    key = {"workdir": b_dir, "requested_step": step, "tasks": csv_list(c.tasks),
           "mcq": c.mcq.to_dict(), "perplexity": c.perplexity.to_dict(), "languages": c.languages}
    cached = m.results.get("baseline")
    if cached and cached.get("key") == key:
      return cached
    base = m.ev.load(c.baseline_checkpoint, step)
    res = m.ev.evaluate_model(base, baseline=True,
                              ppl_languages=csv_list(c.languages) or m.lm.languages)
    entry = {"key": key, "workdir": b_dir, "step": base.step, "name": base.run.name,
             "languages": base.languages, "tokenizer": _tokenizer_name(base), **res}
    m.results["baseline"] = entry
    return entry

  def evaluate(self, m: ModelRun) -> dict:
    base = self.baseline(m)
    original = csv_list(self.c.forgetting.original) or base["languages"]
    out = forgetting.compare(m.entry, base, original)
    out["same_tokenizer"] = base["tokenizer"] == _tokenizer_name(m.lm)
    return {"forgetting": out}

  def figures(self, entry: dict, fig_dir: str, step: int) -> dict[str, str]:
    if not entry.get("forgetting"):
      return {}
    p = forgetting.figure(entry["forgetting"], os.path.join(fig_dir, "forgetting.png"),
                          title=f"Perplexity change vs baseline (step {step})")
    return {"forgetting": p} if p else {}
