"""The expansion experiment's numbers -> results.json, report.md and a trade-off figure.

Definitions (stated in the report too):
  group perplexity  exp of the token-weighted mean held-out NLL over the group's languages
                    ("original" or "new"), so every held-out token counts once;
  forgetting        original-group perplexity / the dense base's - 1 (positive = worse);
  gain              1 - new-group perplexity / the dense base's (positive = better);
  claims            computed from these numbers, never written by hand; PASS, FAIL, or N/A where
                    a number is missing.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform

import numpy as np

FORMAT = "medmoe_jax.experiments.expand/1"
LABELS = {
    "base": "dense base (reference)",
    "dense_ct": "full continual training (dense)",
    "post_moe": "Post-MoE + hybrid-k (Apollo-MoE)",
    "moe_lpr": "MoE-LPR, stage 1 + 2",
    "moe_lpr_stage1": "MoE-LPR, stage 1 only (intermediate)",
    "moe_ct": "MoE-CT",
}
# The table's rows: the four methods, then the intermediate MoE-LPR stage-1 model.
ROWS = (("dense_ct", "dense_ct"), ("post_moe", "post_moe"), ("moe_lpr", "moe_lpr_stage2"),
        ("moe_ct", "moe_ct"), ("moe_lpr_stage1", "moe_lpr_stage1"))
FORGETTING_LIMIT = 0.02  # "within 2% of the dense model's perplexity"


def group_ppl(ppl: dict, langs) -> float | None:
  """exp(token-weighted mean NLL) over `langs` that have held-out tokens."""
  rows = [ppl[l] for l in langs if l in ppl and ppl[l]["tokens"] > 0]
  tokens = sum(r["tokens"] for r in rows)
  if not tokens:
    return None
  return math.exp(sum(r["nll"] * r["tokens"] for r in rows) / tokens)


def _finite(*xs) -> bool:
  return all(x is not None and math.isfinite(x) for x in xs)


def routing_summary(rt: dict, original, new, family_experts: bool) -> dict | None:
  """Per MoE layer: the mean own-(family-)expert share over the languages that have one (only for
  a model whose experts are language families: Post-MoE; elsewhere the eval job's "own expert"
  is a family-table index that means nothing to the model), and the share of assignments to
  expert 0 (MoE-LPR's frozen original FFN) for each group."""
  if not rt or not rt.get("languages"):
    return None
  langs = rt["languages"]

  def expert0(group, field="fractions"):
    rows = [np.asarray(langs[l][field])[:, 0] for l in group if l in langs and field in langs[l]]
    return np.round(np.mean(rows, axis=0), 5).tolist() if rows else None

  own = {l: v["own_share"] for l, v in langs.items()
         if family_experts and v["own_share"] is not None}
  return {"layers": rt["layers"], "experts": rt["experts"],
          "own_share_mean": (rt.get("average") or {}).get("own_share") if family_experts else None,
          "own_share": own, "uniform_share": 1.0 / len(rt["experts"]),
          "expert0_share": {"original": expert0(original), "new": expert0(new)},
          # MoE-LPR's measure: expert 0's mean router probability (each language equally).
          "expert0_prob": {"original": expert0(original, "probs"), "new": expert0(new, "probs")}}


def build_seed(s, trained: dict, evaluated: dict) -> dict:
  """One seed's numbers from its runs' training summaries and eval entries."""
  from medmoe_jax.evaluation import forgetting

  original, new = list(s.original), list(s.new)
  base = evaluated["base"]
  base_orig, base_new = group_ppl(base["perplexity"], original), group_ppl(base["perplexity"], new)
  methods, table = {}, []
  for key, run in ROWS:
    e = evaluated[run]
    o, n = group_ppl(e["perplexity"], original), group_ppl(e["perplexity"], new)
    row = {"method": key, "label": LABELS[key], "run": run,
           "original_ppl": o, "original_change": o / base_orig - 1 if _finite(o, base_orig) else None,
           "new_ppl": n, "new_gain": 1 - n / base_new if _finite(n, base_new) else None,
           "tokens_trained": (trained[run]["tokens"] + (trained["moe_lpr_stage1"]["tokens"]
                                                        if run == "moe_lpr_stage2" else 0.0)),
           "intermediate": key == "moe_lpr_stage1"}
    table.append(row)
    methods[key] = {
        **row, "perplexity": e["perplexity"],
        "forgetting": forgetting.compare(e, base, original),
        "routing": routing_summary(e.get("routing"), original, new, key == "post_moe"),
        "figures": {k: v for k, v in e.get("figures", {}).items()
                    if key == "post_moe" or k != "own_share"},
        "training": {r: trained[r] for r in (["moe_lpr_stage1", run] if key == "moe_lpr" else [run])}}
  curve = [{"step": c["step"], "original_ppl": group_ppl(c["perplexity"], original),
            "new_ppl": group_ppl(c["perplexity"], new)} for c in trained["base"].get("curve", [])]
  methods["moe_lpr"]["review"] = trained["moe_lpr_stage2"].get("review")
  out = {"base": {"perplexity": base["perplexity"], "original_ppl": base_orig, "new_ppl": base_new,
                  "training": trained["base"], "curve": curve, "settled": settled(curve)},
         "runs": trained, "table": table, "methods": methods}
  out["claims"] = claims(out)
  return out


SETTLED_LIMIT = 0.02  # the base "has converged": original-language ppl moved < 2% at the end


def settled(curve: list[dict]) -> dict | None:
  """Whether the base's original-language held-out perplexity has stopped moving: its relative
  change between the last two points of the curve, against SETTLED_LIMIT."""
  pts = [c for c in curve if c["original_ppl"] is not None]
  if len(pts) < 2:
    return None
  change = pts[-1]["original_ppl"] / pts[-2]["original_ppl"] - 1
  return {"last_change": change, "limit": SETTLED_LIMIT, "settled": abs(change) < SETTLED_LIMIT,
          "between_steps": [pts[-2]["step"], pts[-1]["step"]]}


def _stats(xs) -> tuple[float | None, float | None]:
  """(mean, sample standard deviation) of the finite values; sd None below two values."""
  xs = [x for x in xs if x is not None and math.isfinite(x)]
  if not xs:
    return None, None
  return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def _mean_lists(lists):
  lists = [l for l in lists if l is not None]
  return np.round(np.mean(lists, axis=0), 5).tolist() if lists else None


def _mean_routing(rts: list) -> dict | None:
  rts = [r for r in rts if r is not None]
  if not rts:
    return None
  first = rts[0]
  return {"layers": first["layers"], "experts": first["experts"],
          "uniform_share": first["uniform_share"],
          "own_share_mean": _mean_lists([r["own_share_mean"] for r in rts]),
          "own_share": {l: _mean_lists([r["own_share"].get(l) for r in rts])
                        for l in first["own_share"]},
          "expert0_share": {g: _mean_lists([r["expert0_share"][g] for r in rts])
                            for g in ("original", "new")},
          "expert0_prob": {g: _mean_lists([(r.get("expert0_prob") or {}).get(g) for r in rts])
                           for g in ("original", "new")}}


def build(s, per_seed: dict, phases: dict, families: dict) -> dict:
  """results.json's content: every seed's numbers, their mean and spread, and the claims checked
  on the means (with each seed's own verdict beside)."""
  original, new = list(s.original), list(s.new)
  seeds = list(per_seed)
  runs = [per_seed[k] for k in seeds]
  first = runs[0]
  langs = [l for l in original + new if l in first["base"]["perplexity"]]

  def per_lang(ppls: list[dict], base_ppls: list[dict]) -> dict:
    out = {}
    for l in langs:
      vals = [p[l]["ppl"] for p in ppls if l in p]
      changes = [p[l]["ppl"] / b[l]["ppl"] - 1 for p, b in zip(ppls, base_ppls) if l in p and l in b]
      out[l] = {"ppl": _stats(vals)[0], "ppl_sd": _stats(vals)[1],
                "change": _stats(changes)[0], "change_sd": _stats(changes)[1]}
    return out

  base_ppls = [r["base"]["perplexity"] for r in runs]
  base = {"perplexity": per_lang(base_ppls, base_ppls),
          "original_ppl": _stats([r["base"]["original_ppl"] for r in runs])[0],
          "new_ppl": _stats([r["base"]["new_ppl"] for r in runs])[0],
          "training": {str(k): per_seed[k]["base"]["training"] for k in seeds},
          "curve": {str(k): per_seed[k]["base"].get("curve", []) for k in seeds},
          "settled": {str(k): per_seed[k]["base"].get("settled") for k in seeds}}
  table, methods = [], {}
  for i, (key, run) in enumerate(ROWS):
    rows = [r["table"][i] for r in runs]
    row = {"method": key, "label": LABELS[key], "run": run, "intermediate": rows[0]["intermediate"]}
    for field in ("original_ppl", "original_change", "new_ppl", "new_gain", "tokens_trained"):
      row[field], row[field + "_sd"] = _stats([x[field] for x in rows])
    table.append(row)
    ms = [r["methods"][key] for r in runs]
    methods[key] = {**row, "perplexity": per_lang([m["perplexity"] for m in ms], base_ppls),
                    "routing": _mean_routing([m["routing"] for m in ms]),
                    "figures": ms[0]["figures"]}
  methods["moe_lpr"]["review"] = {str(k): per_seed[k]["methods"]["moe_lpr"].get("review")
                                  for k in seeds}
  stage1, cap = s.lpr_steps
  stage2 = [(per_seed[k]["methods"]["moe_lpr"].get("review") or {}).get("steps") for k in seeds]
  results = {
      "format": FORMAT,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "settings": json.loads(json.dumps(_asdict(s))),
      "seeds": {"seeds": seeds,
                "note": "each seed is config.seed of every run of that repetition (parameter "
                        "init, data order; router jitter is off) and the eval job's seed; the "
                        "figures are the first seed's"},
      "machine": machine(),
      "languages": {"original": original, "new": new, "family": families},
      "corpus": corpus_info(s),
      "heldout": {
          "what": ("the eval job's held-out split: record i of each sample file (medmoe_jax/data/"
                   "sample/text/<lang>.jsonl)" if s.corpus == "sample" else
                   "the eval job's held-out split: record i of each synthetic corpus file "
                   "(OUT/corpus/<lang>.jsonl; document i has the same content in every "
                   "language, so it is held out in all of them)")
                  + " with i % 10 == 0; every run trains on the other records "
                  "(config.data.validation_every=10), so no held-out text is trained on"
                  + (f"; at most {s.eval_max_batches} batches a language" if s.eval_max_batches
                     else ""),
          "tokens": {l: first["base"]["perplexity"][l]["tokens"] for l in langs}},
      "budget": {"steps": s.steps, "rows_per_step": s.batch_size, "seq_len": s.seq_len,
                 "row_tokens": s.steps * s.batch_size * s.seq_len,
                 "moe_lpr_split": {"stage1_steps": stage1, "stage2_steps": stage2,
                                   "stage2_cap": cap, "stage2_target": s.lpr_stage2_target,
                                   "replay_share": s.replay_share},
                 "moe_ct_replay_share": s.ct_replay_share,
                 "base_new_share": s.base_new_share,
                 "convention": "every method trains steps x rows_per_step packed rows of seq_len "
                               "tokens (padding included) from the new languages (MoE-CT: "
                               "moe_ct_replay_share of its documents replayed from the original "
                               "ones); MoE-LPR's stage 1 is the budget and stage 2 the review "
                               "after it (stage2_steps per seed, until converged or the cap; "
                               "replay_share of its documents original-language). "
                               "tokens_trained counts the real (non-padding) tokens."},
      "base": base,
      "table": table,
      "methods": methods,
      "per_seed": {str(k): per_seed[k] for k in seeds},
      "wall_time": {"phases": dict(phases), "total": None},
  }
  check_claims(results)
  return results


def check_claims(results: dict) -> None:
  """The claims on the seed means, each with every seed's own verdict beside."""
  results["claims"] = claims(results)
  for c in results["claims"]:
    c["per_seed"] = {str(k): next(x["status"] for x in sr["claims"] if x["id"] == c["id"])
                     for k, sr in results["per_seed"].items()}
    c["held_in_seeds"] = sum(v == "PASS" for v in c["per_seed"].values())


def corpus_info(s) -> dict:
  if s.corpus == "sample":
    return {"kind": "sample", "what": "the embedded 20-language sample (medmoe_jax/data/sample)"}
  return {"kind": "synthetic", "dir": "corpus", "families": s.corpus_families,
          "languages_per_family": s.corpus_languages_per_family, "docs": s.corpus_docs,
          "seed": s.corpus_seed, "tokenizer_vocab": s.tokenizer_vocab,
          "what": "synthetic medical languages in families (medmoe_jax/data/synthetic.py), "
                  "generated into OUT/corpus with a BPE tokenizer trained on it"}


def _asdict(s) -> dict:
  import dataclasses
  return dataclasses.asdict(s)


def machine() -> dict:
  import flax
  import jax
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {"cores": cores, "cpu": platform.processor() or platform.machine(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__,
          "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}, 1 used"}


def claims(results: dict) -> list[dict]:
  """The papers' claims, checked against `results`' numbers (one seed's, or the seed means)."""
  m = results["methods"]
  out = []

  def add(cid, claim, ok, numbers):
    status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
    out.append({"id": cid, "claim": claim, "status": status, "numbers": numbers})

  def fmt(x):
    return "n/a" if x is None else f"{100 * x:+.2f}%"

  def ret(change):  # retention of the base's quality, base ppl / model ppl
    return "n/a" if change is None else f"{100 / (1 + change):.1f}%"

  full = m["dense_ct"]["original_change"]
  add("full_ct_forgets", "full continual training forgets: its original-language perplexity "
      f"rises by more than {100 * FORGETTING_LIMIT:.0f}%",
      None if full is None else full > FORGETTING_LIMIT,
      f"change {fmt(full)} (retention {ret(full)})")
  for key, name in (("moe_lpr", "MoE-LPR"), ("moe_ct", "MoE-CT")):
    ch = m[key]["original_change"]
    add(f"{key}_keeps_original", f"{name} keeps original-language perplexity within "
        f"{100 * FORGETTING_LIMIT:.0f}% of the dense model's",
        None if ch is None else ch <= FORGETTING_LIMIT, f"change {fmt(ch)} (retention {ret(ch)})")
  others = [m["moe_lpr"]["original_change"], m["moe_ct"]["original_change"]]
  add("full_ct_forgets_more", "full continual training loses more original-language "
      "perplexity than MoE-LPR and MoE-CT",
      None if not _finite(full, *others) else full > max(others),
      f"full CT {fmt(full)} (retention {ret(full)}) vs MoE-LPR {fmt(others[0])} (retention "
      f"{ret(others[0])}), MoE-CT {fmt(others[1])} (retention {ret(others[1])})")
  gains = {k: m[k]["new_gain"] for k in ("dense_ct", "post_moe", "moe_lpr", "moe_ct")}
  add("every_method_gains", "every expansion method improves new-language perplexity",
      None if not _finite(*gains.values()) else all(g > 0 for g in gains.values()),
      ", ".join(f"{k} gain {fmt(g)}" for k, g in gains.items()))
  lpr, full_gain = gains["moe_lpr"], gains["dense_ct"]
  add("moe_lpr_gains_more", "MoE-LPR gains more on the new languages than full continual "
      "training", None if not _finite(lpr, full_gain) else lpr > full_gain,
      f"MoE-LPR gain {fmt(lpr)} vs full CT {fmt(full_gain)}")
  review = m["moe_lpr"].get("review")
  reviews = [review] if review and "converged" in review else [
      v for v in (review or {}).values() if v]
  if reviews:
    ok = all(v["converged"] for v in reviews)
    nums = "; ".join(
        (f"step {v['steps']} " + ("converged" if v["converged"] else "at the cap") + ", layers "
         + _list(_last_probs(v))) for v in reviews) + f" (target > {reviews[0]['target']})"
  else:
    ok, nums = None, "no stage-2 record"
  add("lpr_stage2_converges", "MoE-LPR stage 2 drives expert 0's router probability on "
      "original-language tokens above the target in every layer before the cap", ok, nums)
  rt = m["post_moe"]["routing"]
  share = rt["own_share_mean"] if rt else None
  if share and len(share) >= 2:
    ok, nums = share[-1] > share[0], (
        "own-family share by MoE layer " + ", ".join(f"layer {l}: {v:.3f}"
                                                     for l, v in zip(rt["layers"], share))
        + f" (uniform {rt['uniform_share']:.3f}; at most 0.5 with top-2)")
  else:
    ok, nums = None, "needs at least 2 MoE layers with routing results"
  add("own_share_rises", "the hybrid-k model's own-family-expert share is higher in the last "
      "MoE layer than in the first", ok, nums)
  return out


# --------------------------------------------------------------------------- outputs


def write(results: dict, out: str) -> None:
  """OUT/results.json, OUT/report.md and the figures in OUT/figures/ (expand_figures)."""
  from medmoe_jax.evaluation import report as eval_report
  figs = figures(results, os.path.join(out, "figures"))
  results["figures"] = {k: os.path.relpath(v, out) for k, v in figs.items()}
  eval_report.write_json(os.path.join(out, "results.json"), results)
  with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
    f.write(render(results))


def figures(results: dict, fig_dir: str) -> dict[str, str]:
  """The trade-off scatter, MoE-LPR's expert-0 probability per layer and Post-MoE's own-family
  share per layer, all over the seeds: {name: path}."""
  from medmoe_jax.experiments import expand_figures as ef
  os.makedirs(fig_dir, exist_ok=True)
  out = {}
  results["tradeoff_points"] = ef.tradeoff_points(results, [key for key, _ in ROWS])
  path = ef.tradeoff_scatter(results["tradeoff_points"], os.path.join(fig_dir, "tradeoff.png"))
  if path:
    out["tradeoff"] = path
  target = results["budget"]["moe_lpr_split"]["stage2_target"]
  path = ef.lpr_routing_figure(results, os.path.join(fig_dir, "moe_lpr_routing.png"), target)
  if path:
    out["moe_lpr_routing"] = path
  profiles = [(sr["methods"]["post_moe"].get("routing") or {}).get("own_share_mean")
              for sr in results["per_seed"].values()]
  mean, sd = ef.per_layer_stats(profiles)
  rt = results["methods"]["post_moe"].get("routing")
  if mean and rt:
    path = ef.own_share_figure(rt["layers"], mean, sd, rt["uniform_share"],
                               os.path.join(fig_dir, "post_moe_own_share.png"),
                               "Post-MoE hybrid-k: own-family share per MoE layer (new languages)",
                               rt["own_share"])
    if path:
      out["post_moe_own_share"] = path
  return out


def _table(header, rows) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
          + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _secs(x) -> str:
  return "–" if x is None else (f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min ({x:.0f} s)")


def _pm(mean, sd, fmt) -> str:
  """"mean ± sd" (sd only where there are several seeds)."""
  if mean is None:
    return "–"
  return fmt(mean) + ("" if sd is None else f" ± {fmt(sd).lstrip('+')}")


def render(r: dict) -> str:
  s, lang = r["settings"], r["languages"]
  orig, new = lang["original"], lang["new"]
  seeds = r["seeds"]["seeds"]
  n = len(seeds)
  passed = sum(c["status"] == "PASS" for c in r["claims"])
  mach = r["machine"]
  ppl = lambda x: f"{x:.1f}"  # noqa: E731
  pct = lambda x: f"{100 * x:+.1f}%"  # noqa: E731
  L = [f"# Expansion experiment: {', '.join(orig)} -> + {', '.join(new)}", "",
       f"{'Quick run (structure check; its numbers mean little). ' if s['quick'] else ''}"
       f"{r['date']}, {mach['cores']} CPU cores ({mach['cpu']}), jax {mach['jax']}, "
       f"flax {mach['flax']}; {n} seed{'s' if n > 1 else ''} ({', '.join(map(str, seeds))}); "
       f"total wall time {_secs(r['wall_time']['total'])}"
       + (f", CPU time {_secs(r['wall_time']['cpu_total'])} (user + sys; / {mach['cores']} "
          f"cores = {_secs(r['wall_time']['cpu_total'] / mach['cores'])}, the wall time on an "
          "idle machine if every core is kept busy)"
          if r["wall_time"].get("cpu_total") is not None else "") + ". "
       f"Claims held (on the {'seed means' if n > 1 else 'numbers'}): {passed} of {len(r['claims'])}.",
       "",
       "    python -m medmoe_jax.experiments.expand --workdir=OUT" + (" --quick" if s["quick"] else "")
       + (" --spread_out" if s.get("spread_out") else ""),
       "",
       "A dense model trained on the original languages is expanded to the new ones four ways with "
       "the same token budget; each result is evaluated by the eval job on held-out text.", "",
       "## Result", ""]
  if n > 1:
    L += [f"Mean ± standard deviation over the {n} seeds.", ""]
  b = r["base"]
  rows = [[LABELS["base"], ppl(b["original_ppl"]), "0", "100.0%", ppl(b["new_ppl"]), "0", "–"]]
  points = r.get("tradeoff_points") or {}
  for t in r["table"]:
    p = points.get(t["method"])
    rows.append([t["label"], _pm(t["original_ppl"], t["original_ppl_sd"], ppl),
                 _pm(t["original_change"], t["original_change_sd"], pct),
                 "–" if not p else _pm(p["retention"], p["retention_sd"],
                                       lambda x: f"{100 * x:.1f}%"),
                 _pm(t["new_ppl"], t["new_ppl_sd"], ppl), _pm(t["new_gain"], t["new_gain_sd"], pct),
                 f"{t['tokens_trained']:.0f}"])
  L += _table(["method", "original-language ppl", "change vs dense (forgetting)",
               "retention of the base", "new-language ppl", "gain vs dense", "tokens trained"],
              rows)
  L += ["", "Group perplexity: exp of the token-weighted mean held-out NLL over the group's "
        "languages. Change: group ppl / dense base's - 1 (positive = forgot). Retention: dense "
        "base's original-language ppl / the model's (100% = nothing forgotten). Gain: 1 - group "
        "ppl / dense base's (positive = learned). Each seed compares with its own base.", ""]
  if r.get("figures", {}).get("tradeoff"):
    L += ["The MoE-LPR paper's first figure: one point per method, original-language retention "
          "against new-language gain" + (", error bars the sd over the seeds" if n > 1 else "")
          + "; the top right is best.", "", f"![trade-off]({r['figures']['tradeoff']})", ""]

  L += ["## The papers' claims, checked", ""]
  for i, c in enumerate(r["claims"], 1):
    line = f"{i}. **{c['status']}**: {c['claim']}. {c['numbers']}."
    if n > 1:
      line += (f" Per seed: {c['held_in_seeds']} of {n} PASS ("
               + ", ".join(f"seed {k} {v}" for k, v in c["per_seed"].items()) + ").")
    L.append(line)
  L += ["", "A FAIL is reported as measured: the experiment is not tuned to make a claim hold.", ""]

  L += ["## Per language", "", "Held-out perplexity (change vs the dense base)"
        + (", means over the seeds." if n > 1 else "."), ""]
  rows = []
  for group, langs in (("original", orig), ("new", new)):
    for l in langs:
      if l not in b["perplexity"]:
        continue
      row = [l, group, lang["family"].get(l, ""), ppl(b["perplexity"][l]["ppl"])]
      for t in r["table"]:
        v = r["methods"][t["method"]]["perplexity"].get(l)
        row.append("–" if v is None or v["ppl"] is None else f"{v['ppl']:.1f} ({pct(v['change'])})")
      rows.append(row)
  L += _table(["language", "group", "family", "base"] + [t["method"] for t in r["table"]], rows)
  L += [""]

  L += ["## Routing", ""]
  pm = r["methods"]["post_moe"]["routing"]
  if pm:
    L += ["Post-MoE (hybrid-k in training, plain top-2 here): share of each language's "
          "token-to-expert assignments that land on its own family expert, per MoE layer "
          f"(uniform {pm['uniform_share']:.3f}; at most 0.5 with top-2)"
          + (", means over the seeds" if n > 1 else "") + ". Original languages have no own "
          "expert in this model (it was trained on the new languages only).", ""]
    rows = [[l, *[f"{x:.3f}" for x in v]] for l, v in pm["own_share"].items() if v]
    if pm["own_share_mean"]:
      rows.append(["**mean**", *[f"**{x:.3f}**" for x in pm["own_share_mean"]]])
    L += _table(["language", *[f"layer {x}" for x in pm["layers"]]], rows)
    L += ["", f"Post-MoE's MoE layers are {', '.join(map(str, pm['layers']))} of "
          f"{s['num_layers']}: the claim \"higher in the last layers\" compares the last of them "
          "with the first.", ""]
  for key in ("moe_lpr_stage1", "moe_lpr"):
    rt = r["methods"][key]["routing"]
    if rt:
      e0, p0 = rt["expert0_share"], rt.get("expert0_prob") or {}
      L.append(f"- {LABELS[key]}: share of assignments to expert 0 (the frozen original FFN) per "
               f"layer, original languages {_list(e0['original'])}, new languages "
               f"{_list(e0['new'])} (uniform {rt['uniform_share']:.3f}); its mean router "
               f"probability, original {_list(p0.get('original'))}, new {_list(p0.get('new'))}.")
  L += ["", f"Figures (seed {seeds[0]}; the eval job's):", ""]
  for key in ("post_moe", "moe_lpr_stage1", "moe_lpr", "moe_ct"):
    figs = r["methods"][key]["figures"]
    links = [f"[{name}]({figs[name]})" for name in ("own_share", "average", "languages")
             if name in figs]
    if links:
      L.append(f"- {LABELS[key]}: " + ", ".join(links))
  for key, what in (("post_moe_own_share", "Post-MoE's own-family share per MoE layer"),
                    ("moe_lpr_routing", "MoE-LPR's expert-0 probability per layer")):
    if r.get("figures", {}).get(key):
      L += ["", f"{what}" + (f", mean ± sd over the {n} seeds" if n > 1 else "") + ":", "",
            f"![{what}]({r['figures'][key]})"]
  L.append("")
  so = r.get("spread_out")
  if so:
    from medmoe_jax.experiments import spread_out
    L += ["## Spread Out in the End", ""] + spread_out.render(so, "spread_out/")

  L += ["## Base training", ""]
  settle = b.get("settled") or {}
  for k, curve in (b.get("curve") or {}).items():
    if not curve:
      continue
    st = settle.get(k)
    verdict = ("n/a (fewer than two points)" if not st else
               f"{'settled' if st['settled'] else 'NOT settled'}: original-language perplexity "
               f"moved {pct(st['last_change'])} between steps {st['between_steps'][0]} and "
               f"{st['between_steps'][1]} (limit ±{100 * st['limit']:.0f}%)")
    L += [f"Seed {k}: held-out perplexity of the dense base at its checkpoints; {verdict}.", ""]
    L += _table(["step", "original-language ppl", "new-language ppl"],
                [[c["step"], "–" if c["original_ppl"] is None else ppl(c["original_ppl"]),
                  "–" if c["new_ppl"] is None else ppl(c["new_ppl"])] for c in curve])
    L.append("")
  L += ["## MoE-LPR stage 2", ""]
  for k, rv in (r["methods"]["moe_lpr"].get("review") or {}).items():
    if not rv:
      continue
    end = (f"converged at step {rv['steps']}" if rv["converged"] else
           f"NOT converged: stopped at the cap, step {rv['steps']}")
    L += [f"Seed {k}: mean router probability of expert 0 on the original-language tokens of "
          f"each {rv['check_every']}-step window, per layer (target > {rv['target']} in every "
          f"layer, cap {rv['cap']} steps); {end}.", ""]
    pts = [c for c in rv["curve"] if c["expert0_prob"]]
    if pts:
      n_layers = len(pts[0]["expert0_prob"])
      L += _table(["step", *[f"layer {i}" for i in range(n_layers)], "LPR loss"],
                  [[c["step"], *["–" if x is None else f"{x:.3f}" for x in c["expert0_prob"]],
                    "–" if c["lpr_loss"] is None else f"{c['lpr_loss']:.3f}"] for c in pts])
    L.append("")

  split = r["budget"]["moe_lpr_split"]
  losses = "; ".join(f"seed {k}: {v['loss_first']:.2f} -> {v['loss_last']:.2f} "
                     f"({pct(v['loss_change_last_20pct'])} over the last 20% of the steps)"
                     for k, v in b["training"].items())
  sample = s.get("corpus", "sample") == "sample"
  corpus = r.get("corpus") or {}
  L += ["## Setup", "",
        ("- Corpus: the embedded 20-language sample." if sample else
         f"- Corpus: {corpus.get('what', '')}: {corpus.get('families')} families of "
         f"{corpus.get('languages_per_family')} languages, {corpus.get('docs')} documents a "
         f"language, corpus seed {corpus.get('seed')} (OUT/corpus/languages.json has every "
         "language's grammar and sound changes)."),
        f"- Model: d_model {s['d_model']}, {s['num_layers']} layers, {s['num_heads']} heads "
        f"({s['num_kv_heads']} kv), FFN {s['d_ff']}, "
        + ("the sample tokenizer (4096 pieces)" if sample else
           f"a BPE tokenizer trained on the corpus ({s['tokenizer_vocab']} pieces)")
        + f"; rows of {s['seq_len']} tokens, {s['batch_size']} rows a step. Each method keeps "
        "its config's own settings (configs/*.py): Post-MoE "
        + ("7" if sample else str(s["corpus_families"])) + " family experts top-2 in the last "
        "2 layers, hybrid-k; MoE-LPR 4 experts top-2 in every layer; MoE-CT 2 appended blocks "
        "of 4 experts; learning rate, schedule and optimizer as the configs set them.",
        f"- Base: {s['base_steps']} steps on {', '.join(orig)}"
        + (f" with {100 * s['base_new_share']:.0f}% of its documents from {', '.join(new)}"
           if s.get("base_new_share") else "") + f"; training loss {losses}.",
        *(["- Why the runs are short: the sample holds about 9 training documents (3k tokens) a "
           "language, which this model memorises within a few hundred steps, after which "
           "held-out perplexity only rises."] if sample else []),
        f"- Budget: {s['steps']} steps x {s['batch_size']} rows x {s['seq_len']} tokens = "
        f"{r['budget']['row_tokens']} row tokens per method (padding included; the table's "
        "tokens trained are the real ones). Full CT and Post-MoE train on the new languages "
        f"only; MoE-CT with {100 * r['budget'].get('moe_ct_replay_share', 0):.0f}% of its "
        f"documents replayed from the original ones; MoE-LPR stage 1 ({split['stage1_steps']} "
        "steps) on the new languages, then stage 2, the review ("
        + ", ".join(f"{x} steps" for x in split["stage2_steps"] if x is not None)
        + f" per seed, at most {split['stage2_cap']}), on the new languages with "
        f"{100 * split['replay_share']:.0f}% of documents replayed from the original ones.",
        f"- Held-out text: {r['heldout']['what']}. Tokens per language: "
        + ", ".join(f"{l} {k}" for l, k in r["heldout"]["tokens"].items())
        + (". With a few hundred tokens per language, one seed's differences of a few percent "
           "can be noise; the seeds show how much."
           if min(r["heldout"]["tokens"].values(), default=0) < 2000 else
           ". The seeds' spread, not the held-out sample, is the noise that matters here."),
        f"- Seeds: {', '.join(map(str, seeds))} ({r['seeds']['note']}).",
        f"- Machine: {mach['platform']}, Python {mach['python']}, {mach['devices']}.", ""]

  L += ["## Wall time", ""]
  resumed = [f"seed {k} {name} (from step {v['resumed_at_step']})"
             for k, sr in r["per_seed"].items() for name, v in sr["runs"].items()
             if v.get("resumed_at_step")]
  if resumed:
    L += ["Resumed invocation: these runs had checkpoints when it started, so their phase times "
          "cover only what was left: " + ", ".join(resumed) + ".", ""]
  cpu = r["wall_time"].get("phases_cpu") or {}
  L += ["CPU time is the process's user + sys time (all threads): on a shared machine, CPU time "
        "/ cores estimates an idle machine's wall time.", ""] if cpu else []
  L += _table(["phase", "wall time", "CPU time"],
              [[k, _secs(v), _secs(cpu.get(k))] for k, v in r["wall_time"]["phases"].items()]
              + [["**total**", f"**{_secs(r['wall_time']['total'])}**",
                  f"**{_secs(r['wall_time'].get('cpu_total'))}**"]])
  L += ["", "## Files", "",
        "- `results.json`: every number above, each seed's under `per_seed` (format "
        + r["format"] + ").",
        "- `seed<k>/eval/<run>/`: the eval job's results.json, report.md and figures per run.",
        "- `seed<k>/runs/<run>/`: training workdirs (config.json, metrics.jsonl, checkpoints).", ""]
  return "\n".join(L)


def _last_probs(review: dict) -> list | None:
  pts = [c["expert0_prob"] for c in review.get("curve", []) if c.get("expert0_prob")]
  return pts[-1] if pts else None


def _list(xs) -> str:
  return "–" if xs is None else "[" + ", ".join("n/a" if x is None else f"{x:.3f}"
                                                for x in xs) + "]"


def rerender(out: str) -> dict:
  """report.md, the figures and the claims again from OUT/results.json's numbers (after a change
  to this module; nothing is retrained or re-evaluated)."""
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  for sr in results["per_seed"].values():
    sr["claims"] = claims(sr)
  check_claims(results)
  write(results, out)
  return results


def publish(out: str, md_path: str, note: str = "") -> list[str]:
  """OUT/report.md as a page elsewhere (docs/expand_report.md): the images it shows are copied
  beside it, into <md_path without .md>/ (flat names), and linked there; links to OUT's other
  files become `OUT/...` text. Returns the copied images' paths."""
  import re
  import shutil
  with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
    text = f.read()
  fig_dir = os.path.splitext(md_path)[0]
  rel_dir = os.path.basename(fig_dir)
  os.makedirs(fig_dir, exist_ok=True)
  copied = []

  def image(m):
    alt, path = m.group(1), m.group(2)
    name = path.replace("/", "_").replace("figures_", "")
    shutil.copyfile(os.path.join(out, path), os.path.join(fig_dir, name))
    copied.append(os.path.join(fig_dir, name))
    return f"![{alt}]({rel_dir}/{name})"

  text = re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", image, text)
  text = re.sub(r"(?<!!)\[([^\]]*)\]\(([^)]+)\)", lambda m: f"{m.group(1)} `OUT/{m.group(2)}`",
                text)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write((f"<!-- {note} -->\n\n" if note else "") + text)
  return copied


if __name__ == "__main__":
  from medmoe_jax.training import faults
  p = faults.ArgumentParser(prog="python -m medmoe_jax.experiments.expand_report",
                            description="Re-render OUT/report.md and OUT/figures from "
                            "OUT/results.json; --publish also writes it as a page elsewhere")
  p.add_argument("out", help="the experiment's workdir")
  p.add_argument("--publish", default="", help="e.g. docs/expand_report.md: the report with its "
                 "images copied beside it (docs/expand_report/)")
  p.add_argument("--note", default="", help="an HTML comment at the top of the published page")
  a = p.parse_args()
  if not os.path.isfile(os.path.join(a.out, "results.json")):
    raise SystemExit(f"error: {os.path.join(a.out, 'results.json')} not found: OUT is the "
                     "workdir of a finished `python -m medmoe_jax.experiments.expand` run")
  rerender(a.out)
  if a.publish:
    publish(a.out, a.publish, a.note)
