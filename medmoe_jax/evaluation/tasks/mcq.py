"""Medical multiple choice (XMedBench format): generative (the paper's protocol) and/or
log-likelihood (lm-evaluation-harness's) accuracy per source, language and language class."""
from __future__ import annotations

import dataclasses
import glob
import os

from medmoe_jax.evaluation import mcq, report
from medmoe_jax.evaluation.spec import at_least, config_error, csv_list
from medmoe_jax.evaluation.tasks.base import ModelRun, Task, figure

MODES = ("generative", "loglikelihood", "both")


@dataclasses.dataclass(frozen=True)
class MCQSettings:
  """config.mcq (configs/eval.py says what each one means)."""
  files: str                    # "sample" or comma-separated paths/globs
  mode: str                     # generative | loglikelihood | both
  protocol: str                 # mcq.PROTOCOLS
  shots: int
  max_prompt_chars: int
  max_new_tokens: int
  min_new_tokens: int
  stop_at_line: bool
  choices: str                  # text | letter
  max_len: int
  max_per_source: int
  on_bad_item: str              # error | skip
  exclude_from_average: tuple[str, ...] | None  # None: the protocol's own choice


def mcq_files(files: str) -> list[str]:
  """config.mcq.files: "sample" or comma-separated paths/globs -> the files, in order."""
  if files == "sample":
    return mcq.sample_files()
  out = []
  for pattern in csv_list(files):
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
      raise FileNotFoundError(f"config.mcq.files: {pattern!r} matches no file")
    out.extend(found)
  return out


class MCQ(Task):
  name = "mcq"
  on_baseline = True

  def __init__(self, spec):
    super().__init__(spec)
    self._loaded = None

  @classmethod
  def resolve(cls, c) -> MCQSettings:
    m = c.mcq
    if m.mode not in MODES:
      raise config_error("mcq.mode", f"{m.mode!r}; use one of {', '.join(MODES)}")
    protocol = m.get("protocol", "apollo")
    if protocol not in mcq.PROTOCOLS:
      raise config_error("mcq.protocol", f"{protocol!r}; use one of {', '.join(mcq.PROTOCOLS)}")
    if m.choices not in ("text", "letter"):
      raise config_error("mcq.choices", f"{m.choices!r}; use 'text' or 'letter'")
    if m.on_bad_item not in ("error", "skip"):
      raise config_error("mcq.on_bad_item", f"{m.on_bad_item!r}; use 'error' or 'skip'")
    return MCQSettings(
        files=str(m.files), mode=m.mode, protocol=protocol, shots=at_least(c, "mcq.shots", 0),
        max_new_tokens=at_least(c, "mcq.max_new_tokens", 1),
        min_new_tokens=at_least(c, "mcq.min_new_tokens", 0),
        max_prompt_chars=at_least(c, "mcq.max_prompt_chars", 1),
        max_len=at_least(c, "mcq.max_len", 2),
        max_per_source=at_least(c, "mcq.max_per_source", 0),
        stop_at_line=bool(m.stop_at_line), choices=m.choices, on_bad_item=m.on_bad_item,
        exclude_from_average=(None if m.exclude_from_average == "protocol"
                              else tuple(csv_list(m.exclude_from_average))))

  def prepare(self) -> None:
    """Reads the items once: bad multiple-choice files fail here."""
    if self._loaded is None:
      s = self.settings
      files = mcq_files(s.files)
      items, load_report = mcq.load(files, on_bad=s.on_bad_item, max_per_source=s.max_per_source,
                                    languages=list(self.spec.languages) or None)
      self._loaded = (files, items, load_report)

  def evaluate(self, m: ModelRun) -> dict:
    self.prepare()
    s, lm, ev = self.settings, m.lm, m.ev
    files, items, load_report = self._loaded
    res = {"mcq_items": {"files": [os.path.basename(f) for f in files], "items": len(items),
                         "skipped": dict(load_report.skipped),
                         "problems": load_report.problems[:50]},
           "mcq": {}}
    excl = s.exclude_from_average
    if s.mode in ("generative", "both"):
      bar = ev.bar(len(items), f"step {lm.step}: generative MCQ")
      recs = mcq.score_generative(
          items, lambda prompts: lm.generate(prompts, max_new_tokens=s.max_new_tokens,
                                             min_new_tokens=s.min_new_tokens,
                                             stop_at_line=s.stop_at_line, progress=bar),
          lm.tokenizer, shots=s.shots, seed=self.spec.seed, max_chars=s.max_prompt_chars,
          protocol=s.protocol)
      bar.close()
      res["mcq"]["generative"] = mcq.summarize_protocol(recs, "correct", s.protocol, excl)
      ev.write_predictions(m.predictions_dir, "mcq_generative.jsonl", recs)
    if s.mode in ("loglikelihood", "both"):
      bar = ev.bar(sum(len(it.options) for it in items), f"step {lm.step}: log-likelihood MCQ")
      recs = mcq.score_loglikelihood(
          items, lambda reqs: lm.loglikelihood(reqs, max_len=s.max_len, progress=bar),
          choices=s.choices)
      bar.close()
      res["mcq"]["loglikelihood"] = mcq.summarize_protocol(recs, "correct", s.protocol, excl)
      res["mcq"]["loglikelihood_norm"] = mcq.summarize_protocol(recs, "correct_norm", s.protocol,
                                                                excl)
      ev.write_predictions(m.predictions_dir, "mcq_loglikelihood.jsonl", recs)
    return res

  def figures(self, entry: dict, fig_dir: str, step: int) -> dict[str, str]:
    if not entry.get("mcq"):
      return {}
    return figure("mcq", report.mcq_figure(entry["mcq"], os.path.join(fig_dir, "mcq_accuracy.png"),
                                           f"Multiple-choice accuracy per language (step {step})"))
