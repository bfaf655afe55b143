"""Medical multiple choice (XMedBench format): generative (the paper's protocol) and/or
log-likelihood (lm-evaluation-harness's) accuracy per source, language and language class."""
from __future__ import annotations

import glob
import os

from medmoe_jax.evaluation import mcq, report
from medmoe_jax.evaluation.tasks.base import ModelRun, Task, check_at_least, config_error, csv_list

MODES = ("generative", "loglikelihood", "both")


def mcq_files(c) -> list[str]:
  """config.mcq.files: "sample" or comma-separated paths/globs -> the files, in order."""
  if c.mcq.files == "sample":
    return mcq.sample_files()
  files = []
  for pattern in csv_list(c.mcq.files):
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
      raise FileNotFoundError(f"config.mcq.files: {pattern!r} matches no file")
    files.extend(found)
  return files


class MCQ(Task):
  name = "mcq"
  on_baseline = True

  def __init__(self, c):
    super().__init__(c)
    self._loaded = None

  @staticmethod
  def validate(c) -> None:
    if c.mcq.mode not in MODES:
      raise config_error("mcq.mode", f"{c.mcq.mode!r}; use one of {', '.join(MODES)}")
    if c.mcq.get("protocol", "apollo") not in mcq.PROTOCOLS:
      raise config_error("mcq.protocol", f"{c.mcq.protocol!r}; use one of "
                         f"{', '.join(mcq.PROTOCOLS)}")
    if c.mcq.choices not in ("text", "letter"):
      raise config_error("mcq.choices", f"{c.mcq.choices!r}; use 'text' or 'letter'")
    if c.mcq.on_bad_item not in ("error", "skip"):
      raise config_error("mcq.on_bad_item", f"{c.mcq.on_bad_item!r}; use 'error' or 'skip'")
    for key, low in (("mcq.shots", 0), ("mcq.max_new_tokens", 1), ("mcq.min_new_tokens", 0),
                     ("mcq.max_prompt_chars", 1), ("mcq.max_len", 2), ("mcq.max_per_source", 0)):
      check_at_least(c, key, low)

  def prepare(self) -> None:
    """Reads the items once: bad multiple-choice files fail here."""
    if self._loaded is None:
      c = self.c
      files = mcq_files(c)
      items, load_report = mcq.load(files, on_bad=c.mcq.on_bad_item,
                                    max_per_source=int(c.mcq.max_per_source),
                                    languages=csv_list(c.languages) or None)
      self._loaded = (files, items, load_report)

  def evaluate(self, m: ModelRun) -> dict:
    self.prepare()
    c, lm, ev = self.c, m.lm, m.ev
    files, items, load_report = self._loaded
    res = {"mcq_items": {"files": [os.path.basename(f) for f in files], "items": len(items),
                         "skipped": dict(load_report.skipped),
                         "problems": load_report.problems[:50]},
           "mcq": {}}
    protocol = c.mcq.get("protocol", "apollo")
    excl = (None if c.mcq.exclude_from_average == "protocol"
            else csv_list(c.mcq.exclude_from_average))
    if c.mcq.mode in ("generative", "both"):
      bar = ev.bar(len(items), f"step {lm.step}: generative MCQ")
      recs = mcq.score_generative(
          items, lambda prompts: lm.generate(prompts, max_new_tokens=int(c.mcq.max_new_tokens),
                                             min_new_tokens=int(c.mcq.get("min_new_tokens", 0)),
                                             stop_at_line=bool(c.mcq.stop_at_line), progress=bar),
          lm.tokenizer, shots=int(c.mcq.shots), seed=int(c.seed),
          max_chars=int(c.mcq.max_prompt_chars), protocol=protocol)
      bar.close()
      res["mcq"]["generative"] = mcq.summarize_protocol(recs, "correct", protocol, excl)
      ev.write_predictions(m.predictions_dir, "mcq_generative.jsonl", recs)
    if c.mcq.mode in ("loglikelihood", "both"):
      bar = ev.bar(sum(len(it.options) for it in items), f"step {lm.step}: log-likelihood MCQ")
      recs = mcq.score_loglikelihood(
          items, lambda reqs: lm.loglikelihood(reqs, max_len=int(c.mcq.max_len), progress=bar),
          choices=c.mcq.choices)
      bar.close()
      res["mcq"]["loglikelihood"] = mcq.summarize_protocol(recs, "correct", protocol, excl)
      res["mcq"]["loglikelihood_norm"] = mcq.summarize_protocol(recs, "correct_norm", protocol,
                                                                excl)
      ev.write_predictions(m.predictions_dir, "mcq_loglikelihood.jsonl", recs)
    return res

  def figures(self, entry: dict, fig_dir: str, step: int) -> dict[str, str]:
    if not entry.get("mcq"):
      return {}
    p = report.mcq_figure(entry["mcq"], os.path.join(fig_dir, "mcq_accuracy.png"),
                          f"Multiple-choice accuracy per language (step {step})")
    return {"mcq": p} if p else {}
