"""Forgetting: the model's perplexity and accuracy against a baseline checkpoint's
(config.baseline_checkpoint), per language, original languages apart from new ones. Runs when a
baseline is given; the baseline is evaluated by the tasks that run on it (on_baseline), once,
and kept in results.json across steps and reruns."""
from __future__ import annotations

import dataclasses
import os

from medmoe_jax.evaluation import forgetting
from medmoe_jax.evaluation.lm import resolve_checkpoint
from medmoe_jax.evaluation.spec import csv_list
from medmoe_jax.evaluation.tasks.base import ModelRun, Task, figure


@dataclasses.dataclass(frozen=True)
class ForgettingSettings:
  baseline: str                 # config.baseline_checkpoint ("" = no forgetting task)
  baseline_step: int            # -1: the latest (or the step the path names)
  original: tuple[str, ...]     # config.forgetting.original; () = the baseline's languages


def _tokenizer_name(lm) -> str:
  return getattr(lm.tokenizer, "name", repr(lm.tokenizer))


class Forgetting(Task):
  name = "forgetting"
  named = False  # chosen by config.baseline_checkpoint

  @classmethod
  def resolve(cls, c) -> ForgettingSettings:
    return ForgettingSettings(baseline=str(c.baseline_checkpoint),
                              baseline_step=int(c.baseline_step),
                              original=tuple(csv_list(c.forgetting.original)))

  @classmethod
  def selected(cls, spec) -> bool:
    return bool(spec.settings[cls.name].baseline)

  def baseline(self, m: ModelRun) -> dict:
    """The baseline's numbers (cached in results.json under "baseline", keyed by what made
    them: the eval config's own sections, as results.json records them)."""
    s, c = self.settings, self.spec.config
    b_dir, b_step = resolve_checkpoint(s.baseline)
    step = b_step if s.baseline_step < 0 else s.baseline_step
    key = {"workdir": b_dir, "requested_step": step, "tasks": list(self.spec.tasks),
           "mcq": c.mcq.to_dict(), "perplexity": c.perplexity.to_dict(), "languages": c.languages}
    cached = m.results.get("baseline")
    if cached and cached.get("key") == key:
      return cached
    base = m.ev.load(s.baseline, step)
    res = m.ev.evaluate_model(base, baseline=True,
                              ppl_languages=list(self.spec.languages) or m.lm.languages)
    entry = {"key": key, "workdir": b_dir, "step": base.step, "name": base.run.name,
             "languages": base.languages, "tokenizer": _tokenizer_name(base), **res}
    m.results["baseline"] = entry
    return entry

  def evaluate(self, m: ModelRun) -> dict:
    base = self.baseline(m)
    original = list(self.settings.original) or base["languages"]
    out = forgetting.compare(m.entry, base, original)
    out["same_tokenizer"] = base["tokenizer"] == _tokenizer_name(m.lm)
    return {"forgetting": out}

  def figures(self, entry: dict, fig_dir: str, step: int) -> dict[str, str]:
    if not entry.get("forgetting"):
      return {}
    return figure("forgetting", forgetting.figure(
        entry["forgetting"], os.path.join(fig_dir, "forgetting.png"),
        title=f"Perplexity change vs baseline (step {step})"))
