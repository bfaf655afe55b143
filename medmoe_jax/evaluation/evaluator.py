"""The evaluation of a run's checkpoints: the Evaluator composes the tasks (multiple choice,
held-out perplexity, routing, forgetting) of one run into one output directory.
`python -m medmoe_jax.eval` (medmoe_jax/eval.py, which says what it writes) calls `run`."""
from __future__ import annotations

import datetime
import glob
import json
import os
import sys
import time

from medmoe_jax.errors import ConfigError

TASKS = ("mcq", "perplexity", "routing")
MCQ_MODES = ("generative", "loglikelihood", "both")


def _csv(value) -> list[str]:
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  return [v.strip() for v in str(value).split(",") if v.strip()]


def validate(c) -> None:
  """Raise ConfigError naming the key and the fix. Cheap: no files read, no compute."""
  def err(key, msg):
    return ConfigError(f"config.{key}: {msg}")

  if "checkpoint" not in c or "tasks" not in c:
    raise ConfigError("config: not an eval config (no checkpoint, tasks); start from "
                      "configs/eval.py and name the run with --config.checkpoint=<training "
                      "workdir>")
  if not str(c.checkpoint).strip():
    raise err("checkpoint", "no checkpoint given; pass --config.checkpoint=<training workdir> "
              "(or one of its checkpoints/<step>)")
  tasks = _csv(c.tasks)
  bad = [t for t in tasks if t not in TASKS]
  if bad or not tasks:
    raise err("tasks", f"{c.tasks!r}: use a comma-separated subset of {', '.join(TASKS)}")
  if c.mcq.mode not in MCQ_MODES:
    raise err("mcq.mode", f"{c.mcq.mode!r}; use one of {', '.join(MCQ_MODES)}")
  from medmoe_jax.evaluation.mcq import PROTOCOLS  # pylint: disable=g-import-not-at-top
  if c.mcq.get("protocol", "apollo") not in PROTOCOLS:
    raise err("mcq.protocol", f"{c.mcq.protocol!r}; use one of {', '.join(PROTOCOLS)}")
  if c.mcq.choices not in ("text", "letter"):
    raise err("mcq.choices", f"{c.mcq.choices!r}; use 'text' or 'letter'")
  if c.mcq.on_bad_item not in ("error", "skip"):
    raise err("mcq.on_bad_item", f"{c.mcq.on_bad_item!r}; use 'error' or 'skip'")
  for key, low in (("mcq.shots", 0), ("mcq.max_new_tokens", 1), ("mcq.min_new_tokens", 0),
                   ("mcq.max_prompt_chars", 1),
                   ("mcq.max_len", 2), ("mcq.max_per_source", 0), ("batch_size", 1),
                   ("perplexity.seq_len", 0), ("perplexity.max_batches", 0)):
    node = c
    for part in key.split("."):
      node = node[part]
    if int(node) < low:
      raise err(key, f"must be >= {low}, got {node}")
  if c.follow and c.follow_poll_seconds <= 0:
    raise err("follow_poll_seconds", f"must be > 0, got {c.follow_poll_seconds}")
  if c.model.capacity_factor_eval < 0:
    raise err("model.capacity_factor_eval", f"must be >= 0 (0 keeps the run's), got "
              f"{c.model.capacity_factor_eval}")


def mcq_files(c) -> list[str]:
  from medmoe_jax.evaluation import mcq
  if c.mcq.files == "sample":
    return mcq.sample_files()
  files = []
  for pattern in _csv(c.mcq.files):
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
      raise FileNotFoundError(f"config.mcq.files: {pattern!r} matches no file")
    files.extend(found)
  return files


class Evaluator:
  """Composes the evaluation of one run's checkpoints into one output directory."""

  def __init__(self, config, workdir: str, mesh=None):
    import jax

    validate(config)
    self.c = config
    self.out = os.path.abspath(workdir)
    self.mesh = mesh
    self.main = jax.process_index() == 0
    from medmoe_jax.evaluation.lm import resolve_checkpoint
    self.run_dir, self.path_step = resolve_checkpoint(config.checkpoint)
    self.tasks = _csv(config.tasks)

  # --- Pieces shared by every step.

  def _overrides(self) -> dict:
    o = {}
    if self.c.model.moe_backend:
      o["moe.backend"] = self.c.model.moe_backend
    if self.c.model.capacity_factor_eval:
      o["moe.capacity_factor_eval"] = float(self.c.model.capacity_factor_eval)
    return o

  def _load(self, checkpoint, step):
    from medmoe_jax.evaluation.lm import LanguageModel
    return LanguageModel.load(checkpoint, step=step, mesh=self.mesh, mesh_config=self.c.mesh,
                              batch_size=int(self.c.batch_size), overrides=self._overrides())

  def _bar(self, total, desc):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not (self.c.progress and self.main),
                dynamic_ncols=True, leave=False)

  def _items(self):
    from medmoe_jax.evaluation import mcq
    if not hasattr(self, "_mcq"):
      files = mcq_files(self.c)
      wanted = _csv(self.c.languages) or None
      items, report = mcq.load(files, on_bad=self.c.mcq.on_bad_item,
                               max_per_source=int(self.c.mcq.max_per_source), languages=wanted)
      self._mcq = (files, items, report)
    return self._mcq

  def _heldout(self, run):
    from medmoe_jax.evaluation import perplexity
    if not hasattr(self, "_source"):
      data_dir = self.c.perplexity.data_dir or os.path.join(self.out, "data")
      self._source = perplexity.heldout_source(run.data, os.path.expanduser(data_dir))
    return self._source

  # --- One model.

  def evaluate_model(self, lm, *, routing: bool, ppl_languages=None, predictions_dir=None) -> dict:
    """MCQ and/or perplexity (+ routing) of one loaded model -> results dict."""
    import numpy as np

    from medmoe_jax.evaluation import mcq, perplexity
    from medmoe_jax.evaluation import routing as routing_lib

    c, res = self.c, {}
    if "mcq" in self.tasks:
      files, items, load_report = self._items()
      res["mcq_items"] = {"files": [os.path.basename(f) for f in files], "items": len(items),
                          "skipped": dict(load_report.skipped), "problems": load_report.problems[:50]}
      res["mcq"] = {}
      protocol = c.mcq.get("protocol", "apollo")
      excl = (None if c.mcq.exclude_from_average == "protocol"
              else _csv(c.mcq.exclude_from_average))
      if c.mcq.mode in ("generative", "both"):
        bar = self._bar(len(items), f"step {lm.step}: generative MCQ")
        recs = mcq.score_generative(
            items, lambda prompts: lm.generate(prompts, max_new_tokens=int(c.mcq.max_new_tokens),
                                               min_new_tokens=int(c.mcq.get("min_new_tokens", 0)),
                                               stop_at_line=bool(c.mcq.stop_at_line), progress=bar),
            lm.tokenizer, shots=int(c.mcq.shots), seed=int(c.seed),
            max_chars=int(c.mcq.max_prompt_chars), protocol=protocol)
        bar.close()
        res["mcq"]["generative"] = mcq.summarize_protocol(recs, "correct", protocol, excl)
        self._write_predictions(predictions_dir, "mcq_generative.jsonl", recs)
      if c.mcq.mode in ("loglikelihood", "both"):
        n_req = sum(len(it.options) for it in items)
        bar = self._bar(n_req, f"step {lm.step}: log-likelihood MCQ")
        recs = mcq.score_loglikelihood(
            items, lambda reqs: lm.loglikelihood(reqs, max_len=int(c.mcq.max_len), progress=bar),
            choices=c.mcq.choices)
        bar.close()
        res["mcq"]["loglikelihood"] = mcq.summarize_protocol(recs, "correct", protocol, excl)
        res["mcq"]["loglikelihood_norm"] = mcq.summarize_protocol(recs, "correct_norm", protocol,
                                                                  excl)
        self._write_predictions(predictions_dir, "mcq_loglikelihood.jsonl", recs)
    if "perplexity" in self.tasks or routing:
      source = self._heldout(lm.run)
      wanted = ppl_languages or _csv(c.languages) or lm.languages
      langs = perplexity.heldout_languages(source, wanted)
      seq_len = int(c.perplexity.seq_len) or int(lm.run.data.seq_len)
      max_b = int(c.perplexity.max_batches)
      bar = self._bar(None, f"step {lm.step}: held-out text")
      if routing:
        ppl, res["routing"], res["dropped_fraction"] = routing_lib.analyze(
            lm, source, langs, seq_len=seq_len, max_batches=max_b, progress=bar)
      else:
        ppl = perplexity.evaluate(
            lm.token_scores, source, languages=langs,
            model_lang_ids=[lm.lang_index(l) for l in langs], tokenizer=lm.tokenizer,
            seq_len=seq_len, batch_size=lm.batch_size, max_batches=max_b, progress=bar)
      bar.close()
      if "perplexity" in self.tasks:
        res["perplexity"] = ppl
        tokens = sum(v["tokens"] for v in ppl.values())
        nll = sum(v["nll"] * v["tokens"] for v in ppl.values()) / max(tokens, 1)
        res["nll_overall"] = nll
        res["perplexity_overall"] = float(np.exp(min(nll, 700.0)))
        res["heldout"] = {"seq_len": seq_len, "max_batches_per_language": max_b,
                          "tokenizer": getattr(lm.tokenizer, "name", repr(lm.tokenizer))}
    return res

  def _write_predictions(self, directory, name, records):
    if directory is None or not self.main:
      return
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")

  # --- Baseline, steps, outputs.

  def _baseline(self, results, lm):
    """Baseline numbers (cached in results.json across steps and reruns)."""
    c = self.c
    from medmoe_jax.evaluation.lm import resolve_checkpoint
    b_dir, b_step = resolve_checkpoint(c.baseline_checkpoint)
    step = b_step if c.baseline_step < 0 else int(c.baseline_step)
    key = {"workdir": b_dir, "requested_step": step, "tasks": self.tasks,
           "mcq": c.mcq.to_dict(), "perplexity": c.perplexity.to_dict(), "languages": c.languages}
    cached = results.get("baseline")
    if cached and cached.get("key") == key:
      return cached
    base = self._load(c.baseline_checkpoint, step)
    res = self.evaluate_model(base, routing=False,
                              ppl_languages=_csv(c.languages) or lm.languages)
    entry = {"key": key, "workdir": b_dir, "step": base.step, "name": base.run.name,
             "languages": base.languages,
             "tokenizer": getattr(base.tokenizer, "name", repr(base.tokenizer)), **res}
    results["baseline"] = entry
    return entry

  def evaluate_step(self, results: dict, step: int | None) -> dict:
    import jax

    from medmoe_jax.evaluation import forgetting
    from medmoe_jax.evaluation import routing as routing_lib
    from medmoe_jax.evaluation import report

    t0 = time.time()
    lm = self._load(self.run_dir, step)
    if self.main:
      print(f"evaluating {self.run_dir} step {lm.step} on mesh {dict(lm.mesh.shape)}", flush=True)
    routing = "routing" in self.tasks and bool(lm.spec.moe_layer_indices)
    pred_dir = os.path.join(self.out, "predictions", f"step_{lm.step}")
    entry = {"step": lm.step,
             "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}, mesh "
                        f"{dict(lm.mesh.shape)}",
             "batch_size": lm.batch_size}
    entry.update(self.evaluate_model(lm, routing=routing, predictions_dir=pred_dir))
    if "routing" in self.tasks and not routing:
      entry["routing"] = {"skipped": "the model has no MoE layers"}
    if self.c.baseline_checkpoint:
      base = self._baseline(results, lm)
      original = _csv(self.c.forgetting.original) or base["languages"]
      entry["forgetting"] = forgetting.compare(entry, base, original)
      entry["forgetting"]["same_tokenizer"] = (
          base["tokenizer"] == getattr(lm.tokenizer, "name", repr(lm.tokenizer)))
    entry["seconds"] = time.time() - t0
    figs = {}
    if self.main:
      fig_dir = os.path.join(self.out, "figures")
      os.makedirs(fig_dir, exist_ok=True)
      if entry.get("mcq"):
        p = report.mcq_figure(entry["mcq"], os.path.join(fig_dir, "mcq_accuracy.png"),
                              f"Multiple-choice accuracy per language (step {lm.step})")
        if p:
          figs["mcq"] = p
      if entry.get("perplexity"):
        p = report.perplexity_figure(entry["perplexity"], os.path.join(fig_dir, "perplexity.png"),
                                     f"Held-out perplexity per language (step {lm.step})")
        if p:
          figs["perplexity"] = p
      if entry.get("routing", {}).get("languages"):
        figs.update(routing_lib.figures(entry["routing"], fig_dir, step=lm.step))
      if entry.get("forgetting"):
        p = forgetting.figure(entry["forgetting"], os.path.join(fig_dir, "forgetting.png"),
                              title=f"Perplexity change vs baseline (step {lm.step})")
        if p:
          figs["forgetting"] = p
    entry["figures"] = {k: os.path.relpath(v, self.out) for k, v in figs.items()}
    return entry

  def _record(self, results, entry):
    """Adds (or replaces) the step's entry, writes results.json and report.md (which shows this,
    the latest evaluation, whose figures are in figures/, plus the history of all steps)."""
    from medmoe_jax.evaluation import report
    evals = [e for e in results["evaluations"] if e["step"] != entry["step"]] + [entry]
    results["evaluations"] = sorted(evals, key=lambda e: e["step"])
    if not self.main:
      return
    hist = report.history_figure(results["evaluations"],
                                 os.path.join(self.out, "figures", "history.png"))
    if hist:
      entry["figures"]["history"] = os.path.relpath(hist, self.out)
    report.write_json(os.path.join(self.out, "results.json"), results)
    with open(os.path.join(self.out, "report.md"), "w", encoding="utf-8") as f:
      f.write(report.render(results, self.out, step=entry["step"]))

  def _results(self) -> dict:
    from medmoe_jax import config as cfg_lib
    from medmoe_jax.checkpoint import read_run_config
    from medmoe_jax.evaluation import report
    path = os.path.join(self.out, "results.json")
    results = report.load_results(path)
    if results is not None and results["checkpoint"]["workdir"] != self.run_dir:
      raise ConfigError(f"{path} holds results of {results['checkpoint']['workdir']}, not "
                       f"{self.run_dir}; choose another --workdir")
    run_config = read_run_config(self.run_dir)
    if results is None:
      results = {"format": report.FORMAT, "checkpoint": {"workdir": self.run_dir,
                                                         "name": run_config.name},
                 "evaluations": []}
    results["eval_config"] = json.loads(cfg_lib.to_json(self.c))
    results["run_config"] = run_config.to_dict()
    results["seed"] = int(self.c.seed)
    return results

  def run(self) -> dict:
    """Evaluate the requested step (or, following, every step); returns the results dict."""
    if "mcq" in self.tasks:
      self._items()  # bad multiple-choice files fail here, before any checkpoint is read
    os.makedirs(self.out, exist_ok=True)
    results = self._results()
    if not self.c.follow:
      step = self.path_step if self.c.step < 0 else int(self.c.step)
      self._record(results, self.evaluate_step(results, step))
      return results
    return self._follow(results)

  def _follow(self, results) -> dict:
    from medmoe_jax.checkpoint import read_run_config
    from medmoe_jax.evaluation.lm import checkpoint_steps
    final = int(read_run_config(self.run_dir).train.steps)
    from medmoe_jax.checkpoint_integrity import DamagedCheckpointError
    done = {e["step"] for e in results["evaluations"]}
    damaged = set()
    last_new = time.time()
    while True:
      todo = [s for s in checkpoint_steps(self.run_dir) if s not in done]
      for s in todo:
        done.add(s)
        last_new = time.time()
        try:
          entry = self.evaluate_step(results, s)
        except DamagedCheckpointError as e:  # reported, skipped; the next step may be intact
          damaged.add(s)
          if self.main:
            print(f"follow: step {s} skipped: {e}", file=sys.stderr, flush=True)
          continue
        self._record(results, entry)
      if final in done:
        if self.main:
          state = "damaged (skipped)" if final in damaged else "evaluated"
          print(f"follow: the run's final step {final} is {state}; done", flush=True)
        return results
      if time.time() - last_new > self.c.follow_idle_timeout:
        if self.main:
          print(f"follow: no new checkpoint for {self.c.follow_idle_timeout:.0f} s; stopping",
                flush=True)
        return results
      time.sleep(self.c.follow_poll_seconds)


def run(config, workdir: str, mesh=None) -> dict:
  return Evaluator(config, workdir, mesh=mesh).run()
