"""The metrics of the steps between two log points, averaged into one metrics.jsonl record."""
from __future__ import annotations

import jax
import numpy as np

# The window's reserved key in a checkpoint's data item (beside the data iterator's state).
CHECKPOINT_KEY = "_metrics_window"


class MetricWindow:
  """Averages step metrics between log points; per-language loss from token-weighted sums.
  Its state goes into checkpoints, so a run resumed mid-window logs what an uninterrupted one
  would. Skipped (non-finite) steps are counted, not averaged."""

  def __init__(self, languages, count_skips: bool = False):
    self.languages = list(languages)
    self.count_skips = count_skips
    self.reset()

  def reset(self):
    self.n, self.sums, self.arrays, self.skipped = 0, {}, {}, 0

  def get_state(self) -> dict:
    return {"n": self.n, "skipped": self.skipped,
            "arrays": {k: np.asarray(v, np.float64).tolist() for k, v in self.arrays.items()}}

  def set_state(self, s: dict) -> None:
    self.n, self.skipped = int(s["n"]), int(s.get("skipped", 0))
    self.arrays = {k: np.asarray(v, np.float64) for k, v in s["arrays"].items()}

  def add(self, metrics):
    m = jax.device_get(metrics)
    self.n += 1
    for k, v in m.items():
      a = np.asarray(v, dtype=np.float64)
      self.arrays[k] = self.arrays.get(k, 0) + a

  def summary(self) -> dict:
    """The window's record (and a fresh window)."""
    a, n = self.arrays, max(self.n, 1)
    out = {}
    for k in ("loss", "total_loss", "grad_norm", "lb_loss", "z_loss", "lpr_loss"):
      if k in a:
        out[k] = float(a[k] / n)
    if "lang_nll_sum" in a:
      out["lang_loss"] = {l: float(a["lang_nll_sum"][i] / a["lang_tokens"][i])
                          for i, l in enumerate(self.languages) if a["lang_tokens"][i] > 0}
    if "expert_load" in a:
      load = a["expert_load"] / n  # [moe_layers, E]
      out["expert_load"] = {f"layer{li}": [round(float(x), 4) for x in row] for li, row in enumerate(load)}
      out["router_entropy"] = [float(x) for x in a["router_entropy"] / n]
      out["dropped_fraction"] = float(np.mean(a["dropped_fraction"] / n))
    if "lang_own_hits" in a and "moe_lang_tokens" in a:
      hits, toks = a["lang_own_hits"], a["moe_lang_tokens"]  # [moe_layers, L]
      out["own_expert_rate"] = {
          l: [round(float(hits[j, i] / toks[j, i]), 4) for j in range(hits.shape[0])]
          for i, l in enumerate(self.languages) if toks[0, i] > 0}
    if "expert0_prob_sum" in a:
      # MoE-LPR: mean router probability of expert 0 on original-language tokens, per MoE layer.
      p0, n0 = a["expert0_prob_sum"], a["original_tokens"]
      out["expert0_prob_original"] = [round(float(p / t), 5) if t > 0 else None
                                      for p, t in zip(p0, n0)]
    out["tokens"] = float(a.get("tokens", 0))
    if self.count_skips:
      out["skipped_steps"] = self.skipped
    self.reset()
    return out
