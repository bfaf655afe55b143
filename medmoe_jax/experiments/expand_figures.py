"""The expansion experiment's figures, drawn from results.json's numbers.

  tradeoff_points / tradeoff_scatter   the MoE-LPR paper's first figure: one point per method,
                                       new-language gain against original-language retention,
                                       error bars the spread over seeds;
  lpr_routing_figure                   MoE-LPR: expert 0's mean router probability per layer on
                                       the original and the new languages (stage 1 and stage 2);
  own_share_figure                     own-family share of routing per layer, mean ± sd over
                                       seeds (Post-MoE; the all-layers hybrid-k model).

Each figure's numbers come from a function that returns them (tested against the metrics), so
what is drawn is what the report states.
"""
from __future__ import annotations

import math

import numpy as np

# The four methods of the paper's figure, in the legend's order.
SCATTER_METHODS = ("dense_ct", "post_moe", "moe_lpr", "moe_ct")
SCATTER_LABELS = {"dense_ct": "full continual training", "post_moe": "Post-MoE hybrid-k",
                  "moe_lpr": "MoE-LPR", "moe_ct": "MoE-CT"}


def _stats(xs) -> tuple[float | None, float | None]:
  """(mean, sample sd) of the finite values; sd None below two values."""
  xs = [x for x in xs if x is not None and math.isfinite(x)]
  if not xs:
    return None, None
  return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def retention(original_ppl: float | None, base_original_ppl: float | None) -> float | None:
  """The share of the base's original-language quality a model keeps: base ppl / model ppl
  (1 = kept all of it; 0.5 = perplexity doubled)."""
  if original_ppl is None or base_original_ppl is None or original_ppl <= 0:
    return None
  return base_original_ppl / original_ppl


def tradeoff_points(results: dict, methods=SCATTER_METHODS) -> dict:
  """{method: {retention, retention_sd, gain, gain_sd, seeds}}: each seed's retention (against
  its own base) and new-language gain, then their mean and sample sd over the seeds."""
  points = {}
  for m in methods:
    ret, gain = [], []
    for sr in results["per_seed"].values():
      row = sr["methods"][m]
      ret.append(retention(row["original_ppl"], sr["base"]["original_ppl"]))
      gain.append(row["new_gain"])
    (r, r_sd), (g, g_sd) = _stats(ret), _stats(gain)
    points[m] = {"retention": r, "retention_sd": r_sd, "gain": g, "gain_sd": g_sd,
                 "seeds": len(ret)}
  return points


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def scatter_xy(points: dict) -> dict:
  """What the scatter draws, in percent: {method: (x, y, xerr, yerr)}; methods without both
  numbers are left out."""
  pct = lambda v: None if v is None else 100 * v  # noqa: E731
  return {m: (pct(p["gain"]), pct(p["retention"]), pct(p["gain_sd"]), pct(p["retention_sd"]))
          for m, p in points.items() if p["retention"] is not None and p["gain"] is not None}


def tradeoff_scatter(points: dict, path: str) -> str | None:
  """x: new-language gain (higher is better), y: original-language retention (higher is better);
  the top right corner is the paper's goal."""
  xy = scatter_xy({m: p for m, p in points.items() if m in SCATTER_METHODS})
  if not xy:
    return None
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.2, 4.6))
  colors = {"dense_ct": "tab:red", "post_moe": "tab:orange", "moe_lpr": "tab:blue",
            "moe_ct": "tab:green"}
  markers = {"dense_ct": "s", "post_moe": "D", "moe_lpr": "o", "moe_ct": "^"}
  for m, (x, y, xerr, yerr) in xy.items():  # distinct markers: points may coincide
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers.get(m, "o"), ms=8, capsize=4,
                alpha=0.8, color=colors.get(m), label=SCATTER_LABELS.get(m, m))
  ax.axhline(100, color="gray", ls="--", lw=1, label="base (no forgetting)")
  ax.set_xlabel("new languages: perplexity gain vs the base (%)")
  ax.set_ylabel("original languages: retention of the base (%)\n(base ppl / model ppl)")
  n = max(points[m]["seeds"] for m in xy)
  ax.set_title("Expansion trade-off" + (f" (mean ± sd over {n} seeds)" if n > 1 else ""),
               fontsize=10)
  ax.set_ylim(0, max(105, 5 + max(y for _, y, _, _ in xy.values())))
  ax.legend(fontsize=8, loc="lower left")
  ax.grid(alpha=0.3)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def per_layer_stats(profiles: list) -> tuple[list | None, list | None]:
  """Mean and sample sd per layer of equally long per-seed profiles (None ones skipped)."""
  rows = [np.asarray(p, np.float64) for p in profiles if p is not None]
  if not rows:
    return None, None
  a = np.stack(rows)
  sd = np.std(a, axis=0, ddof=1).tolist() if len(rows) > 1 else None
  return a.mean(axis=0).tolist(), sd


def lpr_routing_series(results: dict) -> dict:
  """{"stage1"|"stage2": {"original"|"new": (mean, sd)}}: expert 0's mean router probability per
  layer on held-out text (the eval job's), over the seeds."""
  out = {}
  for stage, key in (("stage1", "moe_lpr_stage1"), ("stage2", "moe_lpr")):
    out[stage] = {}
    for group in ("original", "new"):
      prof = [((sr["methods"][key].get("routing") or {}).get("expert0_prob") or {}).get(group)
              for sr in results["per_seed"].values()]
      out[stage][group] = per_layer_stats(prof)
  return out


def lpr_routing_figure(results: dict, path: str, target: float | None = None) -> str | None:
  series = lpr_routing_series(results)
  if series["stage2"]["original"][0] is None:
    return None
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.2, 4.2))
  colors = {"original": "tab:blue", "new": "tab:red"}
  for stage, style in (("stage1", "--"), ("stage2", "-")):
    for group in ("original", "new"):
      mean, sd = series[stage][group]
      if mean is None:
        continue
      x = np.arange(len(mean))
      ax.errorbar(x, mean, yerr=sd, ls=style, marker="o", ms=5, capsize=3, color=colors[group],
                  mfc="white" if stage == "stage1" else colors[group],  # hollow: stage 1 only
                  label=f"{group} languages, {'stage 1' if stage == 'stage1' else 'stage 1 + 2'}")
  if target is not None:
    ax.axhline(target, color="gray", ls=":", lw=1, label=f"stage-2 target {target}")
  ax.set_xticks(np.arange(len(series["stage2"]["original"][0])))
  ax.set_xlabel("layer")
  ax.set_ylabel("mean router probability of expert 0\n(the frozen original FFN)")
  ax.set_ylim(0, 1.02)
  ax.set_title("MoE-LPR: routing to the original FFN per layer (held-out text)", fontsize=10)
  ax.legend(fontsize=7, loc="best")
  ax.grid(alpha=0.3)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def own_share_figure(layers: list, mean: list, sd: list | None, uniform: float, path: str,
                     title: str, per_language: dict | None = None) -> str | None:
  """Own-family share of routing assignments per MoE layer: the mean (± sd over seeds) and,
  thin, each language's."""
  if not mean:
    return None
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.2, 4.2))
  x = np.arange(len(mean))
  for i, (lang, prof) in enumerate((per_language or {}).items()):
    if prof:
      ax.plot(x, prof, lw=0.8, alpha=0.6, color=plt.get_cmap("tab20")(i % 20), label=lang)
  ax.errorbar(x, mean, yerr=sd, color="black", lw=2.2, marker="o", capsize=3, label="mean")
  ax.axhline(uniform, color="gray", ls="--", lw=1, label=f"uniform ({uniform:.2f})")
  ax.set_xticks(x, [str(l) for l in layers])
  ax.set_xlabel("MoE layer")
  ax.set_ylabel("share of assignments to own family's expert")
  ax.set_ylim(0, 1.02)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
  ax.grid(alpha=0.3)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def quarter_means(profile: list) -> tuple[float, float]:
  """Mean of the first and of the last quarter of the layers (at least one layer each)."""
  n = len(profile)
  q = max(1, n // 4)
  return float(np.mean(profile[:q])), float(np.mean(profile[-q:]))


def spread_out_check(profile: list) -> dict:
  """"Spread Out in the End": the last quarter's mean own-family share exceeds the first's."""
  if not profile or len(profile) < 2:
    return {"status": "N/A", "first_quarter": None, "last_quarter": None, "layers_per_quarter": 0}
  first, last = quarter_means(profile)
  return {"status": "PASS" if last > first else "FAIL", "first_quarter": first,
          "last_quarter": last, "layers_per_quarter": max(1, len(profile) // 4)}
