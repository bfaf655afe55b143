"""Multiple-choice accuracy from scored records: per source, per language, and the means over
major and minor languages. A leaf: the official Apollo averages (apollo.py) and the translated
protocol (mcq.py) both summarize through it."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Not in the paper's averages (reported per source all the same).
DEFAULT_EXCLUDED_FROM_AVERAGE = ("pubmedqa",)


def summarize(records: Sequence[dict], key: str = "correct",
              exclude_from_average: Sequence[str] = DEFAULT_EXCLUDED_FROM_AVERAGE,
              unweighted_languages: Sequence[str] = ()) -> dict:
  """Accuracy per source and per language (micro: over items; macro: mean of the language's
  source accuracies), and the means over major and minor languages of the languages' "acc":
  micro, or macro for the unweighted_languages (the official Apollo averages: en, zh).
  Skipped items are counted, not scored. Sources in exclude_from_average are reported per source
  but left out of the language and class averages (the paper leaves out PubMedQA)."""
  excluded = {s.lower() for s in exclude_from_average}
  per_source: dict[str, dict] = {}
  for r in records:
    s = per_source.setdefault(r["source"], {"lang": r["lang"], "class": r["class"], "n": 0,
                                           "correct": 0, "skipped": 0})
    if r.get("skipped"):
      s["skipped"] += 1
      continue
    s["n"] += 1
    s["correct"] += int(bool(r[key]))
  for s in per_source.values():
    s["acc"] = s["correct"] / s["n"] if s["n"] else None
  per_lang: dict[str, dict] = {}
  for name, s in per_source.items():
    if name.lower() in excluded or not s["n"]:
      continue
    l = per_lang.setdefault(s["lang"], {"class": s["class"], "n": 0, "correct": 0, "sources": []})
    l["n"] += s["n"]
    l["correct"] += s["correct"]
    l["sources"].append(name)
  for code, l in per_lang.items():
    l["acc_weighted"] = l["correct"] / l["n"]
    l["acc_macro"] = float(np.mean([per_source[s]["acc"] for s in l["sources"]]))
    l["averaging"] = "unweighted" if code in unweighted_languages else "weighted"
    l["acc"] = l["acc_macro"] if code in unweighted_languages else l["acc_weighted"]

  def mean_of(cls):
    accs = [l["acc"] for l in per_lang.values() if l["class"] == cls]
    return (float(np.mean(accs)) if accs else None), len(accs)

  major, n_major = mean_of("major")
  minor, n_minor = mean_of("minor")
  n = sum(s["n"] for s in per_source.values())
  return {"per_source": per_source, "per_language": per_lang,
          "major_average": major, "major_languages": n_major,
          "minor_average": minor, "minor_languages": n_minor,
          "items": n, "skipped": sum(s["skipped"] for s in per_source.values()),
          "overall": (sum(s["correct"] for s in per_source.values()) / n) if n else None}
