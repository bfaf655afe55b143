"""Routing analysis: which experts each language's tokens go to, layer by layer.

For every language and MoE layer: the fraction of the language's token-to-expert assignments
(k per token) that land on each expert, the mean router probability of each expert, and, where
the run's method assigns experts to languages (Apollo-MoE's family or language experts), the
share landing on the language's own expert and the share of tokens whose top-k contains it.
Experts are named as the method defines them (`scheme`): Apollo-MoE by family or language;
MoE-LPR "expert 0 (original FFN)" and new experts, with the paper's measure, expert 0's share
and probability per layer for the original and the new languages; MoE-CT's experts live in the
appended blocks; any other model "expert i". Inference routing (no hybrid forcing;
hard routing still follows the language), on held-out text. Figures: a heatmap layers x experts
per language and averaged over languages, and the own-expert share by layer for every language:
the paper's "Spread Out in the End" figure (low in early layers, high in the last ones).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medmoe_jax.evaluation import perplexity


class RoutingCounts:
  """Accumulates assignment counts [layers, languages, experts] over batches."""

  def __init__(self, languages: Sequence[str], own_expert: Sequence[int], num_layers: int,
               num_experts: int):
    self.languages = list(languages)
    self.own = np.asarray(own_expert, np.int64)  # [L] (-1: no own expert)
    self.m, self.l, self.e = num_layers, len(self.languages), num_experts
    self.assign = np.zeros((self.m, self.l, self.e), np.int64)
    self.prob_sum = np.zeros((self.m, self.l, self.e), np.float64)
    self.has_probs = False
    self.hits = np.zeros((self.m, self.l), np.int64)
    self.tokens = np.zeros((self.l,), np.int64)

  def add(self, expert_indices: np.ndarray, text_lang: np.ndarray, valid: np.ndarray,
          router_probs: np.ndarray | None = None):
    """expert_indices: [M, B, S, k]; text_lang: [B, S] index into `languages` (-1 none);
    valid: [B, S] bool (real tokens); router_probs: [M, B, S, E] or None."""
    keep = valid & (text_lang >= 0)
    lang = text_lang[keep]                                     # [N]
    if router_probs is not None:
      self.has_probs = True
      probs = np.asarray(router_probs, np.float64)[:, keep, :]  # [M, N, E]
      for j in range(self.m):
        np.add.at(self.prob_sum[j], lang, probs[j])
    idx = expert_indices[:, keep, :]                           # [M, N, k]
    m, n, k = idx.shape
    layer = np.broadcast_to(np.arange(m)[:, None, None], idx.shape)
    flat = (layer * self.l + lang[None, :, None]) * self.e + idx
    self.assign += np.bincount(flat.ravel(), minlength=self.m * self.l * self.e).reshape(
        self.m, self.l, self.e)
    own = self.own[lang]                                       # [N]
    hit = np.any(idx == own[None, :, None], axis=-1) & (own >= 0)[None]  # [M, N]
    self.hits += np.stack([np.bincount(lang, weights=hit[j], minlength=self.l) for j in range(m)]
                          ).astype(np.int64)
    self.tokens += np.bincount(lang, minlength=self.l)

  def result(self, layer_ids: Sequence[int], expert_names: Sequence[str]) -> dict:
    """JSON-ready: per language fractions [layers][experts], own expert, own share and hit rate
    per layer; the average over languages (each language weighted equally)."""
    per_lang = {}
    for i, lang in enumerate(self.languages):
      if self.tokens[i] == 0:
        continue
      total = self.assign[:, i].sum(-1, keepdims=True)
      frac = self.assign[:, i] / np.maximum(total, 1)
      own = int(self.own[i])
      per_lang[lang] = {
          "tokens": int(self.tokens[i]), "own_expert": own,
          "own_expert_name": expert_names[own] if 0 <= own < len(expert_names) else None,
          "fractions": _round(frac),
          "own_share": _round(frac[:, own]) if own >= 0 else None,
          "own_hit_rate": _round(self.hits[:, i] / self.tokens[i]) if own >= 0 else None,
      }
      if self.has_probs:
        per_lang[lang]["probs"] = _round(self.prob_sum[:, i] / self.tokens[i])
    out = {"layers": [int(x) for x in layer_ids], "experts": list(expert_names),
           "languages": per_lang}
    if per_lang:
      fr = np.mean([np.asarray(v["fractions"]) for v in per_lang.values()], axis=0)
      shares = [v["own_share"] for v in per_lang.values() if v["own_share"] is not None]
      out["average"] = {"fractions": _round(fr),
                        "own_share": _round(np.mean(shares, axis=0)) if shares else None,
                        "uniform_share": 1.0 / self.e}
    return out


def _round(a) -> list:
  return np.round(np.asarray(a, np.float64), 5).tolist()


# --- Figures.

def _heatmap(ax, frac, layers, experts, title):
  frac = np.asarray(frac)
  im = ax.imshow(frac, vmin=0.0, vmax=max(1e-9, float(frac.max())), cmap="viridis", aspect="auto")
  ax.set_title(title, fontsize=10)
  ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers], fontsize=8)
  ax.set_xticks(range(len(experts)), experts, rotation=40, ha="right", fontsize=8)
  if frac.size <= 120:
    for (r, c), v in np.ndenumerate(frac):
      ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
              color="white" if v < 0.6 * frac.max() else "black")
  return im


def figures(result: dict, out_dir: str, *, step: int | None = None) -> dict[str, str]:
  """Writes the routing PNGs; returns {name: path}: "average", "own_share", "languages" (all
  heatmaps on one page), and "lang:<code>" for each language."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  layers, experts, langs = (result.get("layer_names") or result["layers"], result["experts"],
                            result["languages"])
  suffix = f" (step {step})" if step is not None else ""
  files = {}
  if not langs:
    return files
  h = 0.9 + 0.45 * len(layers)
  w = 2.2 + 0.75 * len(experts)

  def save(fig, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

  fig, ax = plt.subplots(figsize=(w, h + 0.8))
  im = _heatmap(ax, result["average"]["fractions"], layers, experts,
                f"Routing: share of assignments per expert, mean over {len(langs)} languages{suffix}")
  fig.colorbar(im, ax=ax, fraction=0.04)
  files["average"] = save(fig, "routing_average.png")

  for lang, v in langs.items():
    fig, ax = plt.subplots(figsize=(w, h + 0.8))
    own = f", own expert: {v['own_expert_name']}" if v["own_expert_name"] else ""
    im = _heatmap(ax, v["fractions"], layers, experts, f"Routing of {lang}{own}{suffix}")
    if v["own_expert"] is not None and v["own_expert"] >= 0:
      ax.add_patch(matplotlib.patches.Rectangle((v["own_expert"] - 0.5, -0.5), 1, len(layers),
                                                fill=False, edgecolor="red", linewidth=1.5))
    fig.colorbar(im, ax=ax, fraction=0.04)
    files[f"lang:{lang}"] = save(fig, f"routing_{lang}.png")

  ncols = min(4, len(langs))
  nrows = -(-len(langs) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * (0.6 + 0.4 * len(experts)),
                                                   nrows * (0.9 + 0.3 * len(layers))),
                           squeeze=False)
  vmax = max(float(np.max(v["fractions"])) for v in langs.values())
  for ax, (lang, v) in zip(axes.ravel(), langs.items()):
    im = ax.imshow(np.asarray(v["fractions"]), vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
    ax.set_title(lang, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=6)
    if v["own_expert"] is not None and v["own_expert"] >= 0:
      ax.add_patch(matplotlib.patches.Rectangle((v["own_expert"] - 0.5, -0.5), 1, len(layers),
                                                fill=False, edgecolor="red", linewidth=1.2))
  for ax in axes.ravel()[len(langs):]:
    ax.axis("off")
  fig.suptitle(f"Routing per language (rows: MoE layers, columns: experts {', '.join(experts)}; "
               f"red: own expert){suffix}", fontsize=9)
  fig.tight_layout()
  fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01,
               label="share of assignments")
  files["languages"] = save(fig, "routing_languages.png")

  if result["average"].get("own_share") is None:
    return files  # no language has an own expert (MoE-LPR, MoE-CT, learned routing)
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  cmap = plt.get_cmap("tab20")
  x = np.arange(len(layers))
  for i, (lang, v) in enumerate(langs.items()):
    if v["own_share"] is not None:
      ax.plot(x, v["own_share"], marker="o", ms=3, lw=1, color=cmap(i % 20), label=lang)
  if result["average"]["own_share"] is not None:
    ax.plot(x, result["average"]["own_share"], color="black", lw=2.5, label="mean")
  ax.axhline(result["average"]["uniform_share"], color="gray", ls="--", lw=1, label="uniform (1/E)")
  ax.set_xticks(x, [str(l) for l in layers])
  ax.set_xlabel("MoE layer")
  ax.set_ylabel("share of assignments to own expert")
  ax.set_ylim(0, 1.02)
  ax.set_title(f"Own-expert share by layer (Spread Out in the End){suffix}", fontsize=10)
  ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
  files["own_share"] = save(fig, "routing_own_share.png")
  return files


# --- The pass over held-out text.

def scheme(run) -> str:
  """How the run's method defines its experts: "lpr" (MoE-LPR: expert 0 is the original FFN),
  "moe_ct" (appended MoE blocks), "assigned" (Apollo-MoE: experts of language families or
  languages, language_routing hybrid/hard), or "learned" (no assignment). run: config.Run."""
  if (run.upcycle_method == "lpr" or run.train.lpr_loss_weight > 0
      or any("preset:lpr" in item for item in run.train.freeze)):
    return "lpr"
  if any(kind == "appended" for kind, _ in run.model.segments):
    return "moe_ct"
  if run.model.moe.language_routing != "none":
    return "assigned"
  return "learned"


def expert_names(lm) -> list[str]:
  """Expert id -> name as the run's method defines them (see `scheme`)."""
  e = lm.spec.moe.num_experts
  how = scheme(lm.run)
  if how == "lpr":
    return ["expert 0 (original FFN)"] + [f"expert {i} (new)" for i in range(1, e)]
  if how != "assigned":
    return [f"expert {i}" for i in range(e)]
  names = list(lm.run.expert_names)[:e]
  return names + [f"expert {i}" for i in range(len(names), e)]


def layer_names(lm) -> list[str]:
  """The MoE layers' labels: their index, or "appended j" for MoE-CT's appended blocks."""
  base = lm.spec.num_layers
  return [str(i) if i < base else f"appended {i - base + 1}" for i in lm.spec.moe_layer_indices]


def lpr_summary(result: dict, original: Sequence[str]) -> dict:
  """MoE-LPR's measure: per MoE layer, expert 0's share of the assignments and its mean router
  probability, averaged over the original and over the new languages (each language equally)."""
  out = {}
  for group, keep in (("original", lambda l: l in original), ("new", lambda l: l not in original)):
    langs = [v for l, v in result["languages"].items() if keep(l)]
    if not langs:
      continue
    out[group] = {
        "languages": [l for l in result["languages"] if keep(l)],
        "expert0_share": _round(np.mean([np.asarray(v["fractions"])[:, 0] for v in langs], 0)),
        "expert0_prob": (_round(np.mean([np.asarray(v["probs"])[:, 0] for v in langs], 0))
                         if all("probs" in v for v in langs) else None)}
  return out


def own_experts(lm, languages: Sequence[str]) -> list[int]:
  """Each language's own expert under the run's assignment (-1: the method assigns none, not one
  of the model's languages, or its family has no expert)."""
  if scheme(lm.run) != "assigned":
    return [-1] * len(languages)
  table = lm.spec.moe.lang_to_expert  # the assignment's, kept by every assigned routing mode
  out = []
  for lang in languages:
    i = lm.lang_index(lang)
    out.append(int(table[i]) if i >= 0 and table[i] < lm.spec.moe.num_experts else -1)
  return out


def original_languages(run) -> list[str]:
  """config.languages.original (a subset of the run's languages), in lang_id order."""
  return [l for l, o in zip(run.languages, run.model.moe.lang_is_original) if o]


def analyze(lm, source, languages: Sequence[str], *, seq_len: int, max_batches: int = 0,
            progress=None) -> tuple[dict, dict, float | None]:
  """One pass over the held-out `source` for `languages`: (perplexity per language, routing
  result, mean fraction of MoE token-slots dropped by expert capacity)."""
  counts = RoutingCounts(languages, own_experts(lm, languages), len(lm.spec.moe_layer_indices),
                         lm.spec.moe.num_experts)
  dropped = []

  def on_routing(scores, batch):
    counts.add(scores["expert_indices"], batch["lang_ids"], batch["segment_ids"] > 0,
               scores.get("router_probs"))
    dropped.append(float(np.mean(scores["dropped_fraction"])))

  ppl = perplexity.evaluate(
      lm.token_scores, source, languages=languages,
      model_lang_ids=[lm.lang_index(l) for l in languages], tokenizer=lm.tokenizer,
      seq_len=seq_len, batch_size=lm.batch_size, max_batches=max_batches, on_routing=on_routing,
      progress=progress)
  result = counts.result([int(i) for i in lm.spec.moe_layer_indices], expert_names(lm))
  result["scheme"] = scheme(lm.run)
  result["layer_names"] = layer_names(lm)
  if result["scheme"] == "lpr" and result["languages"]:
    result["lpr"] = lpr_summary(result, original_languages(lm.run))
  return ppl, result, (float(np.mean(dropped)) if dropped else None)
