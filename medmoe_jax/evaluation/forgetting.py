"""Forgetting: how much a model lost (or gained) against a baseline checkpoint, per language.

The baseline (e.g. the dense model before upcycling, or MoE-LPR's stage-1 model) is evaluated on
the same held-out text and multiple-choice items. Languages split into "original" (the baseline
already knew them: by default the baseline run's config.languages.use) and "new" (the rest):
catastrophic forgetting shows as a perplexity rise / accuracy drop on the original languages.
Perplexities of two models compare only under the same tokenizer (checked by the caller).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compare(model: dict, baseline: dict, original: Sequence[str]) -> dict:
  """model, baseline: {"perplexity": {lang: {"ppl", ...}}, "mcq": {mode: summary}} (either part
  may be missing). Returns per-language changes and means per group."""
  original = set(original)
  out = {"original_languages": sorted(original), "perplexity": {}, "accuracy": {}}
  mp, bp = model.get("perplexity") or {}, baseline.get("perplexity") or {}
  for lang in sorted(set(mp) & set(bp)):
    a, b = mp[lang]["ppl"], bp[lang]["ppl"]
    out["perplexity"][lang] = {"group": "original" if lang in original else "new", "baseline": b,
                               "model": a, "delta": a - b, "relative": (a - b) / b if b else None}
  for mode in sorted(set(model.get("mcq") or {}) & set(baseline.get("mcq") or {})):
    ml = model["mcq"][mode]["per_language"]
    bl = baseline["mcq"][mode]["per_language"]
    rows = {}
    for lang in sorted(set(ml) & set(bl)):
      rows[lang] = {"group": "original" if lang in original else "new",
                    "baseline": bl[lang]["acc"], "model": ml[lang]["acc"],
                    "delta": ml[lang]["acc"] - bl[lang]["acc"]}
    out["accuracy"][mode] = rows
  summary = {}
  for group in ("original", "new"):
    rel = [v["relative"] for v in out["perplexity"].values()
           if v["group"] == group and v["relative"] is not None]
    g = {"languages": sum(v["group"] == group for v in out["perplexity"].values()),
         "mean_ppl_relative_change": float(np.mean(rel)) if rel else None}
    for mode, rows in out["accuracy"].items():
      d = [v["delta"] for v in rows.values() if v["group"] == group]
      g[f"mean_acc_delta_{mode}"] = float(np.mean(d)) if d else None
    summary[group] = g
  out["summary"] = summary
  return out


def figure(result: dict, path: str, *, title: str = "") -> str | None:
  """Bar chart of the relative perplexity change per language, original vs new."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = result["perplexity"]
  if not rows:
    return None
  langs = sorted(rows, key=lambda l: (rows[l]["group"] != "original", l))
  vals = [100.0 * (rows[l]["relative"] or 0.0) for l in langs]
  colors = ["tab:blue" if rows[l]["group"] == "original" else "tab:orange" for l in langs]
  fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(langs) + 1.5), 3.8))
  ax.bar(range(len(langs)), vals, color=colors)
  ax.axhline(0, color="black", lw=0.8)
  ax.set_xticks(range(len(langs)), langs, fontsize=8)
  ax.set_ylabel("perplexity change vs baseline (%)")
  ax.set_title(title or "Forgetting: perplexity change per language", fontsize=10)
  from matplotlib.patches import Patch
  ax.legend(handles=[Patch(color="tab:blue", label="original"), Patch(color="tab:orange", label="new")],
            fontsize=8)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path
