"""results.json, report.md and the figures of an evaluation directory.

results.json holds every number: {"format", "checkpoint", "eval_config", "run_config",
"evaluations": [one entry per evaluated step, ascending], "baseline"}. report.md renders the
latest entry (tables per language and source, figures embedded) and, when several steps were
evaluated (follow mode), their history.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from medmoe_jax.fileio import write_atomic

FORMAT = "medmoe_jax.eval/1"
MODES = (("generative", "generative"), ("loglikelihood", "log-lik. acc"),
         ("loglikelihood_norm", "log-lik. acc_norm"))


def load_results(path: str) -> dict | None:
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: malformed results file ({e.msg}); move it away to "
                       "start a fresh one") from None
  if data.get("format") != FORMAT:
    raise ValueError(f"{path}: not a medmoe_jax evaluation results file (format "
                     f"{data.get('format')!r}); choose another --workdir")
  return data


def write_json(path: str, data: dict) -> None:
  """Atomic: a reader (or a crash) never sees half a file."""
  write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False, default=_json_default))


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def pct(x) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def num(x, digits=3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


# --- Figures.

def mcq_figure(mcq: dict, path: str, title: str) -> str | None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  modes = [(k, label) for k, label in MODES if k in mcq]
  langs = sorted({l for k, _ in modes for l in mcq[k]["per_language"]},
                 key=lambda l: (mcq[modes[0][0]]["per_language"].get(l, {}).get("class") != "major", l))
  if not langs:
    return None
  fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.22 * len(langs) * len(modes) + 2.0)), 3.8))
  width = 0.8 / len(modes)
  for j, (k, label) in enumerate(modes):
    vals = [100 * (mcq[k]["per_language"].get(l, {}).get("acc") or 0.0) for l in langs]
    ax.bar(np.arange(len(langs)) + (j - (len(modes) - 1) / 2) * width, vals, width, label=label)
  ax.set_xticks(range(len(langs)), langs, fontsize=8)
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def perplexity_figure(ppl: dict, path: str, title: str) -> str | None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not ppl:
    return None
  langs = list(ppl)
  fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(langs) + 1.5), 3.6))
  ax.bar(range(len(langs)), [ppl[l]["ppl"] for l in langs], color="tab:purple")
  ax.set_xticks(range(len(langs)), langs, fontsize=8)
  ax.set_ylabel("perplexity (per token)")
  ax.set_yscale("log")
  ax.set_title(title, fontsize=10)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def history_figure(evaluations: list, path: str) -> str | None:
  """Accuracy averages (left) and held-out perplexity (right) against the training step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if len(evaluations) < 2:
    return None
  steps = [e["step"] for e in evaluations]
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
  colors = dict(zip([k for k, _ in MODES], ["tab:blue", "tab:orange", "tab:green"]))
  for k, label in MODES:
    for avg, ls in (("major_average", "-"), ("minor_average", "--")):
      ys = [((e.get("mcq") or {}).get(k) or {}).get(avg) for e in evaluations]
      if any(y is not None for y in ys):
        ax.plot(steps, [100 * y if y is not None else np.nan for y in ys], ls, marker="o",
                color=colors[k], label=f"{label}, {avg.split('_')[0]}")
  ax.set_xlabel("training step")
  ax.set_ylabel("accuracy (%)")
  ax.set_title("Multiple choice: mean over languages", fontsize=10)
  if ax.lines:
    ax.legend(fontsize=7)
  ppls = [e.get("perplexity_overall") for e in evaluations]
  ax2.plot(steps, [p if p is not None else np.nan for p in ppls], color="tab:purple", marker="s")
  ax2.set_xlabel("training step")
  ax2.set_ylabel("perplexity (per token)")
  ax2.set_title("Held-out perplexity, all languages", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


# --- report.md

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return out


def _rel(path: str, root: str) -> str:
  del root  # entries hold paths relative to the output directory already
  return path.replace(os.sep, "/")


def render(results: dict, root: str, step: int | None = None) -> str:
  """report.md for the evaluation of `step` (default: the last) in `results`, plus the history
  of all evaluated steps. Figure paths in the entries are relative to root, as are the links."""
  e = next((x for x in results["evaluations"] if x["step"] == step), results["evaluations"][-1])
  ck = results["checkpoint"]
  cfg = results["eval_config"]
  lines = [f"# Evaluation: {ck.get('name', '')} at step {e['step']}", "",
           f"- checkpoint: `{ck['workdir']}` step {e['step']}",
           f"- evaluated: {e.get('evaluated_at', '')} in {e.get('seconds', 0):.0f} s on "
           f"{e.get('devices', '')}",
           f"- seed (exemplar sampling): {cfg.get('seed')}; tasks: {cfg.get('tasks')}"]
  figs = e.get("figures", {})
  mcq = e.get("mcq") or {}
  if mcq:
    m = cfg.get("mcq", {})
    lines += ["", "## Medical multiple choice", "",
              f"Items: {e['mcq_items']['items']} from {', '.join(e['mcq_items']['files'])}"
              + (f"; skipped at load: {e['mcq_items']['skipped']}" if e['mcq_items']['skipped'] else "")
              + ". " + (f"Generative: protocol {m.get('protocol', 'apollo')}, "
                        f"{m.get('shots')}-shot exemplars from the same source, prompts up to "
                        f"{m.get('max_prompt_chars')} characters, greedy decoding up to "
                        f"{m.get('max_new_tokens')} new tokens, letter extraction on the first "
                        "non-empty line. " if "generative" in mcq else "")
              + ("Log-likelihood: lm-evaluation-harness convention over option "
                 f"{m.get('choices')}s (acc, acc_norm = per character). " if "loglikelihood" in mcq else "")
              + "Accuracy in %; a language's accuracy is over its items; the averages are means "
              "over languages.", ""]
    modes = [(k, label) for k, label in MODES if k in mcq]
    first = mcq[modes[0][0]]
    rows = []
    for avg, label in (("major_average", "major languages"), ("minor_average", "minor languages")):
      rows.append([f"{label} ({first[avg.split('_')[0] + '_languages']})"]
                  + [pct(mcq[k][avg]) for k, _ in modes])
    rows.append(["all items"] + [pct(mcq[k]["overall"]) for k, _ in modes])
    lines += _table(["average"] + [label for _, label in modes], rows) + [""]
    langs = sorted({l for k, _ in modes for l in mcq[k]["per_language"]},
                   key=lambda l: (first["per_language"].get(l, {}).get("class") != "major", l))
    rows = []
    for l in langs:
      info = first["per_language"].get(l, {})
      rows.append([l, info.get("class", ""), str(info.get("n", ""))]
                  + [pct(mcq[k]["per_language"].get(l, {}).get("acc")) for k, _ in modes])
    lines += ["### Per language", ""] + _table(["language", "class", "items"]
                                               + [label for _, label in modes], rows) + [""]
    rows = []
    for s in sorted(first["per_source"]):
      info = first["per_source"][s]
      rows.append([s, info["lang"], str(info["n"]), str(info["skipped"])]
                  + [pct(mcq[k]["per_source"].get(s, {}).get("acc")) for k, _ in modes])
    lines += ["### Per source", ""] + _table(["source", "language", "items", "skipped"]
                                             + [label for _, label in modes], rows) + [""]
    if "mcq" in figs:
      lines += [f"![multiple-choice accuracy per language]({_rel(figs['mcq'], root)})", ""]
  ppl = e.get("perplexity") or {}
  if ppl:
    lines += ["## Held-out perplexity", "",
              "Per-token perplexity on the validation split of the run's corpus (documents the "
              "model did not train on), next-token targets as in training.", ""]
    rows = [[l, str(v["tokens"]), num(v["nll"]), f"{v['ppl']:.2f}"] for l, v in ppl.items()]
    rows.append(["**all**", str(sum(v["tokens"] for v in ppl.values())),
                 num(e.get("nll_overall")), f"{e['perplexity_overall']:.2f}"])
    lines += _table(["language", "tokens", "nll", "perplexity"], rows) + [""]
    if e.get("dropped_fraction") is not None:
      lines += [f"MoE tokens dropped by expert capacity during this pass: "
                f"{pct(e['dropped_fraction'])}%.", ""]
    if "perplexity" in figs:
      lines += [f"![perplexity per language]({_rel(figs['perplexity'], root)})", ""]
  rt = e.get("routing")
  if rt and rt.get("skipped"):
    lines += ["## Routing", "", f"Skipped: {rt['skipped']}.", ""]
  if rt and rt.get("languages"):
    lines += ["## Routing", "",
              f"Inference routing on held-out text: share of each language's token-to-expert "
              f"assignments per expert, at MoE layers {rt['layers']} (experts: "
              f"{', '.join(rt['experts'])}). "
              + ("MoE-LPR: expert 0 is the frozen original FFN; its share of the assignments and "
                 "its mean router probability per layer, for the original and the new languages."
                 if rt.get("lpr") else
                 "Own share: assignments landing on the language's own expert; hit rate: tokens "
                 "whose top-k holds it." if rt.get("scheme", "assigned") == "assigned" else
                 "The method assigns no expert to a language."), ""]
    for key, alt in (("own_share", "own-expert share by layer"), ("average", "average routing"),
                     ("languages", "routing per language")):
      if key in figs:
        lines += [f"![{alt}]({_rel(figs[key], root)})", ""]
    names = rt.get("layer_names") or [str(l) for l in rt["layers"]]
    if rt.get("lpr"):
      # MoE-LPR's measure (its paper): expert 0 (the original FFN) per layer, original vs new.
      header = ["languages"] + [f"expert-0 share L{l}" for l in names] + \
               [f"expert-0 prob L{l}" for l in names]
      rows = [[f"{group} ({', '.join(g['languages'])})"] + [pct(x) for x in g["expert0_share"]]
              + [pct(x) for x in (g["expert0_prob"] or [None] * len(names))]
              for group, g in rt["lpr"].items()]
      lines += _table(header, rows) + [""]
    if any(v["own_share"] is not None for v in rt["languages"].values()):
      header = ["language", "own expert"] + [f"share L{l}" for l in names] + \
               [f"hit L{l}" for l in names]
      rows = []
      for l, v in rt["languages"].items():
        rows.append([l, str(v["own_expert_name"])] + [pct(x) for x in (v["own_share"] or [None] * len(names))]
                    + [pct(x) for x in (v["own_hit_rate"] or [None] * len(names))])
      lines += _table(header, rows) + [""]
    per_lang = [f"[{k.split(':', 1)[1]}]({_rel(p, root)})" for k, p in figs.items() if k.startswith("lang:")]
    if per_lang:
      lines += ["Heatmap per language: " + ", ".join(per_lang), ""]
  fg = e.get("forgetting")
  if fg:
    b = results.get("baseline", {})
    lines += ["## Forgetting", "",
              f"Against the baseline `{b.get('workdir')}` step {b.get('step')}; original "
              f"languages: {', '.join(fg['original_languages']) or '–'}.", ""]
    rows = []
    for g, s in fg["summary"].items():
      rows.append([g, str(s["languages"]), pct(s["mean_ppl_relative_change"])]
                  + [pct(s.get(f"mean_acc_delta_{k}")) for k, _ in MODES if k in fg["accuracy"]])
    lines += _table(["languages", "count", "mean perplexity change (%)"]
                    + [f"mean Δ {label} (points)" for k, label in MODES if k in fg["accuracy"]],
                    rows) + [""]
    rows = []
    acc_langs = {l for rows_ in fg["accuracy"].values() for l in rows_}
    for l in sorted(set(fg["perplexity"]) | acc_langs):
      v = fg["perplexity"].get(l)
      acc = [fg["accuracy"][k].get(l) for k, _ in MODES if k in fg["accuracy"]]
      group = v["group"] if v else next(a["group"] for a in acc if a)
      ppl_cells = [f"{v['baseline']:.2f}", f"{v['model']:.2f}", pct(v["relative"])] if v else ["–"] * 3
      rows.append([l, group] + ppl_cells + [pct(a["delta"]) if a else "–" for a in acc])
    lines += _table(["language", "group", "baseline ppl", "ppl", "change (%)"]
                    + [f"Δ {label}" for k, label in MODES if k in fg["accuracy"]], rows) + [""]
    if "forgetting" in figs:
      lines += [f"![forgetting]({_rel(figs['forgetting'], root)})", ""]
  evals = results["evaluations"]
  if len(evals) > 1:
    lines += ["## History", ""]
    modes = [(k, label) for k, label in MODES if any(k in (x.get("mcq") or {}) for x in evals)]
    rows = []
    for x in evals:
      row = [str(x["step"])]
      for k, _ in modes:
        s = (x.get("mcq") or {}).get(k) or {}
        row += [pct(s.get("major_average")), pct(s.get("minor_average"))]
      row.append(f"{x['perplexity_overall']:.2f}" if x.get("perplexity_overall") else "–")
      rows.append(row)
    header = ["step"] + [f"{label} {a}" for _, label in modes for a in ("major", "minor")] + ["perplexity"]
    lines += _table(header, rows) + [""]
    if "history" in figs:
      lines += [f"![history]({_rel(figs['history'], root)})", ""]
  return "\n".join(lines) + "\n"
