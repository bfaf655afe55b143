"""Language expansion in small: `python -m medmoe_jax.experiments.expand --workdir=OUT [--quick]`.

Reproduces, at a size a laptop runs in minutes, the trade-off the papers describe between four
ways of teaching a trained model new languages:

  0. corpus     by default a synthetic corpus of medical languages in four families
                (medmoe_jax/data/synthetic.py), written to OUT/corpus with its own tokenizer:
                original languages qaa, qab (family A) and qba (B), new ones qca, qcb (C) and
                qda (D). --corpus=sample uses the embedded 20-language sample instead (original
                en, zh, es; new sw, ha: Niger-Congo; mg: Austronesian);
  1. base       a dense model trained on the "original" languages plus a small share
                (base_new_share of the documents) of the new ones, as real base models have seen
                a little of every language; the eval job measures held-out perplexity at
                base_curve_points checkpoints (the curve, and whether it has settled);
  2. expansion  four methods, each given the same budget (steps x batch x seq_len token rows) of
                text in "new" languages from families the original ones do not cover:
                  dense_ct  full continual training of the dense model (configs/dense.py);
                  post_moe  Apollo-MoE Post-MoE upcycling, 7 language-family experts in the last
                            2 layers, hybrid-k routing (configs/post_moe.py);
                  moe_lpr   MoE-LPR stage 1 (new experts beside the frozen original FFN; the
                            budget) then stage 2, the review (routers only, LPR loss, replay_share
                            of the documents from the original languages) until the mean router
                            probability of expert 0 on original-language tokens exceeds
                            lpr_stage2_target in every layer, or lpr_stage2_cap steps
                            (configs/moe_lpr_*.py);
                  moe_ct    MoE-CT, frozen base + appended gated MoE blocks, ct_replay_share of
                            its documents from the original languages (configs/moe_ct.py);
  3. eval       the eval job (medmoe_jax/eval.py) on every model: held-out perplexity per
                language, routing per language and layer for the MoE models;
  4. report     OUT/report.md and OUT/results.json (experiments/expand_report.py): forgetting
                (original-language perplexity change), retention and gain (new-language
                perplexity) per method, the papers' claims checked one by one from the numbers,
                the figures (experiments/expand_figures.py: the MoE-LPR paper's retention-vs-gain
                scatter, MoE-LPR's expert-0 probability and Post-MoE's own-family share per
                layer, all over the seeds), wall and CPU time per phase, the machine.
                `python -m medmoe_jax.experiments.expand_report OUT` re-renders it from
                results.json;
  --spread_out  "Spread Out in the End" (experiments/spread_out.py) in its own process beside
                the seeds, into OUT/spread_out; the report carries its section.

Everything runs in this process on one device through the Python APIs (Trainer, Evaluator).
OUT keeps seed<k>/runs/<name>/ (training workdirs), seed<k>/eval/<name>/ (the eval job's
outputs; eval/base_curve/step<n>/ for the base's curve), corpus/ (the synthetic corpus), data/
(the built corpus, shared) and jax_cache/ (compiled programs, shared by the seeds). Running the same command again resumes: finished runs are not retrained.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from medmoe_jax.experiments.common import (Clock, ExperimentError, load_config, loss_summary,
                                           pin_settings, quick_xla_flags, read_metrics)
from medmoe_jax.training import faults

SAMPLE_LANGUAGES = (("en", "zh", "es"), ("sw", "ha", "mg"))
SYNTHETIC_LANGUAGES = (("qaa", "qab", "qba"), ("qca", "qcb", "qda"))
CORPORA = ("synthetic", "sample")

# Runs, in order: (name, config file, the run it starts from).
RUNS = (("base", "dense", None),
        ("dense_ct", "dense", "base"),
        ("post_moe", "post_moe", "base"),
        ("moe_lpr_stage1", "moe_lpr_stage1", "base"),
        ("moe_lpr_stage2", "moe_lpr_stage2", "moe_lpr_stage1"),
        ("moe_ct", "moe_ct", "base"))


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that decides the experiment's numbers (saved in OUT/settings.json)."""
  # "synthetic": generated into OUT/corpus (medmoe_jax/data/synthetic.py); "sample": the
  # embedded 20-language sample.
  corpus: str = "synthetic"
  original: tuple = SYNTHETIC_LANGUAGES[0]   # Settings.make picks the corpus's defaults
  new: tuple = SYNTHETIC_LANGUAGES[1]
  # The synthetic corpus (ignored with --corpus=sample): 4 families of 2 languages, documents per
  # language, its seed, and the size of the BPE tokenizer trained on it.
  corpus_families: int = 4
  corpus_languages_per_family: int = 2
  corpus_docs: int = 3000
  corpus_seed: int = 0
  tokenizer_vocab: int = 1024
  # The whole experiment repeats for each seed (init, data order); the report gives the mean and
  # the spread, and each claim's verdict per seed: held-out text is a few hundred tokens a
  # language, so one seed's differences of a few percent can be noise.
  seeds: tuple = (0, 1, 2)
  # The model: every method's is this dense decoder, upcycled or extended by the method's config.
  d_model: int = 96
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 2
  d_ff: int = 288
  seq_len: int = 128
  batch_size: int = 8
  # Synthetic corpus (3000 documents a language): a 300-step base pilot at these settings (seed
  # 0, 5% new-language documents, checkpoints every 50 steps) had original-language held-out
  # perplexity 26.1, 6.17, 3.43, 2.56, 2.22, 2.07 at steps 50..300 (still -6.8% over the last 50
  # steps; new languages 281 -> 44.7), 106 s of training on the shared 2-core machine. A
  # one-seed pilot of the whole default at d_model 64 / 400 base steps took 340 CPU s (user +
  # sys; 308 + 33) with every program compiled, and its base still moved -7.1% between steps 300
  # and 400 (held-out ppl 1.9 -> 1.7): hence d_model 96 (the largest the 20-minute, 3-seed
  # budget holds with margin: compile dominates the first seed, later seeds read the compiled
  # programs from OUT/jax_cache) and 600 base steps with a 6-point curve.
  # The sample (--corpus=sample; Settings.make then defaults to 120) holds ~9 training documents
  # (~3k tokens) a language, which a model memorises within a few hundred steps: past that,
  # held-out perplexity only rises. 120 sat where held-out perplexity was lowest in a pilot
  # (seed 0, eval job every 20-25 steps): a 300-step base run had en/zh/es held-out perplexity
  # 740/1424/773 at step 25, 441/727/527 at 100 (its minimum), 726/1368/1155 at 300 (training
  # loss 3.45); full continual training from a 120-step base reached its lowest new-language
  # perplexity at 120-160 of 200 steps (sw/ha/mg 220/182/127 at 140, against 3594/3249/3857).
  base_steps: int = 600
  base_new_share: float = 0.05   # share of the base's documents from the new languages
  base_curve_points: int = 6     # held-out perplexity of the base at this many checkpoints
  steps: int = 150               # the expansion budget of every method (steps of batch_size rows)
  # MoE-LPR stage 2 (the review): until the mean router probability of expert 0 on the
  # original-language tokens of a log window exceeds the target in every layer, checked every
  # lpr_stage2_check steps, at most lpr_stage2_cap steps.
  lpr_stage2_target: float = 0.95
  lpr_stage2_cap: int = 200
  lpr_stage2_check: int = 10
  # Share of documents from the original languages: MoE-LPR stage 2 (their script draws the same
  # number of documents from every dataset: about half with 3 + 3 languages) and MoE-CT (whose
  # paper trains on a multilingual mixture).
  replay_share: float = 0.5
  ct_replay_share: float = 0.2
  eval_batch_size: int = 8
  eval_max_batches: int = 0      # > 0: at most this many held-out batches per language
  # "Spread Out in the End" (experiments/spread_out.py) after the seeds, into OUT/spread_out,
  # with its own budget; the report then carries its section.
  spread_out: bool = False
  quick: bool = False

  @classmethod
  def make(cls, quick: bool = False, **overrides) -> "Settings":
    """Defaults (3 seeds; the full run's wall time on 2 CPU cores is to be measured) or --quick
    (one seed, a structure check, a few minutes). The languages default to the corpus's."""
    base = dict(QUICK, quick=True) if quick else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    langs = SAMPLE_LANGUAGES if base.get("corpus") == "sample" else SYNTHETIC_LANGUAGES
    if base.get("corpus") == "sample":
      base.setdefault("base_steps", 120)
    base.setdefault("original", langs[0])
    base.setdefault("new", langs[1])
    return cls(**base)

  @property
  def lpr_steps(self) -> tuple[int, int]:
    """(stage 1 steps, stage 2's cap): stage 1 is the budget; stage 2 stops when converged."""
    return self.steps, self.lpr_stage2_cap


QUICK = dict(d_model=32, num_layers=3, num_heads=2, num_kv_heads=1, d_ff=64, seq_len=64,
             batch_size=4, base_steps=20, base_curve_points=2, steps=10, lpr_stage2_cap=6,
             lpr_stage2_check=3, eval_batch_size=4, eval_max_batches=4, corpus_docs=60,
             tokenizer_vocab=512, seeds=(0,))


def check(s: Settings) -> None:
  if s.corpus not in CORPORA:
    raise ExperimentError(f"--corpus: {s.corpus!r}; use one of {', '.join(CORPORA)}")
  if s.corpus == "sample":
    from medmoe_jax.config import SAMPLE_LANGUAGES as known
    where = "the embedded sample"
  else:
    try:
      known = synthetic_settings(s).codes()
    except ValueError as e:
      raise ExperimentError(f"--corpus_families/--corpus_languages_per_family: {e}") from None
    where = "the synthetic corpus"
  for group, codes in (("original", s.original), ("new", s.new)):
    if not codes:
      raise ExperimentError(f"--{group}: no languages given")
    missing = [x for x in codes if x not in known]
    if missing:
      raise ExperimentError(f"--{group}: {missing[0]!r} is not in {where}; choose "
                            f"from {', '.join(known)}")
  both = set(s.original) & set(s.new)
  if both:
    raise ExperimentError(f"--original and --new share {sorted(both)}; a language is one or the other")
  fam = family_of(s, s.original + s.new)
  covered = {fam[x] for x in s.original}
  overlap = [x for x in s.new if fam[x] in covered]
  if overlap:
    table = "table apollo50" if s.corpus == "sample" else "the corpus's family table"
    raise ExperimentError(f"--new: {overlap[0]!r} is {fam[overlap[0]]}, a family the original "
                          f"languages cover ({table}); choose new languages from other "
                          "families so that Post-MoE's family experts separate old from new")
  if not s.seeds or len(set(s.seeds)) != len(s.seeds):
    raise ExperimentError(f"--seed/--num_seeds: need distinct seeds, got {s.seeds}")
  if s.steps < 1 or s.base_steps < 1 or s.lpr_stage2_cap < 1 or s.lpr_stage2_check < 1:
    raise ExperimentError(f"--steps, --base_steps, --lpr_stage2_cap and --lpr_stage2_check must "
                          f"be >= 1, got {s.steps}, {s.base_steps}, {s.lpr_stage2_cap}, "
                          f"{s.lpr_stage2_check}")
  if not 0 <= s.base_new_share < 1:
    raise ExperimentError(f"--base_new_share must be in [0, 1), got {s.base_new_share}")


def synthetic_settings(s: Settings):
  from medmoe_jax.data import synthetic
  return synthetic.Settings(seed=s.corpus_seed, families=s.corpus_families,
                            languages_per_family=s.corpus_languages_per_family,
                            docs=s.corpus_docs)


def family_of(s: Settings, codes) -> dict:
  """Language -> family: the Apollo-MoE table (the one Post-MoE's experts follow) for the
  sample, the corpus's own families for the synthetic corpus."""
  if s.corpus == "synthetic":
    from medmoe_jax.data import synthetic
    fam = {c: f for f, cs in synthetic.family_table(synthetic_settings(s)).items() for c in cs}
    return {x: fam[x] for x in codes}
  from medmoe_jax import languages as langs
  a = langs.expert_assignment("apollo50", "family", list(codes))
  return {x: a.expert_names[e] for x, e in zip(codes, a.lang_to_expert)}


def corpus_dir(out: str) -> str:
  return os.path.join(out, "corpus")


def prepare_corpus(s: Settings, out: str, clock) -> dict | None:
  """The synthetic corpus and its tokenizer in OUT/corpus (written once; the settings pin it)."""
  if s.corpus != "synthetic":
    return None
  from medmoe_jax.data import synthetic
  d = corpus_dir(out)
  if os.path.exists(os.path.join(d, "tokenizer.model")):
    return synthetic.load_metadata(d)
  with clock.phase("corpus"):
    corpus = synthetic.Corpus(synthetic_settings(s))
    meta = corpus.write(d)
    tok = synthetic.train_corpus_tokenizer(corpus, d, s.tokenizer_vocab)
  clock.log(f"corpus: {len(meta['docs'])} languages x {s.corpus_docs} documents in {d}, "
            f"tokenizer of {tok.vocab_size} pieces")
  return meta


# --------------------------------------------------------------------------- configs


def seed_dir(out: str, seed: int) -> str:
  return os.path.join(out, f"seed{seed}")


def run_config(name: str, s: Settings, out: str, seed: int):
  """The training config of run `name`: the method's own config file with the experiment's model
  size, data, budget, languages and seed; nothing else of the method changes (on the synthetic
  corpus, Post-MoE gets one expert per family of the corpus, as the paper has per family)."""
  file, source = {r[0]: (r[1], r[2]) for r in RUNS}[name]
  c = load_config(file)
  steps = {"base": s.base_steps, "moe_lpr_stage2": s.lpr_stage2_cap}.get(name, s.steps)
  c.name = name
  c.seed = seed
  c.model.update(dict(d_model=s.d_model, num_layers=s.num_layers, num_heads=s.num_heads,
                      num_kv_heads=s.num_kv_heads, d_ff=s.d_ff))
  c.data.update(dict(seq_len=s.seq_len, batch_size=s.batch_size,
                     data_dir=os.path.join(out, "data")))
  every = {"base": max(1, steps // max(1, s.base_curve_points)),
           "moe_lpr_stage2": s.lpr_stage2_check}.get(name, steps)
  c.train.update(dict(steps=steps, log_every=min(every, max(1, min(10, steps // 10))),
                      checkpoint_every=every,
                      keep_checkpoints=s.base_curve_points + 1 if name == "base" else 1,
                      async_checkpoint=False))
  if name == "moe_lpr_stage2":
    c.train.log_every = s.lpr_stage2_check  # each check reads the window since the last one
  if s.corpus == "synthetic":
    from medmoe_jax.data import synthetic
    synthetic.configure(c, corpus_dir(out))
    c.data.tokenizer = os.path.join(corpus_dir(out), "tokenizer.model")
    c.model.vocab_size = s.tokenizer_vocab
    if name == "post_moe":
      c.moe.num_experts = s.corpus_families
  # The original languages: replayed at a share of the documents (the base's share is the rest
  # after its small share of new-language documents).
  replay = {"base": 1.0 - s.base_new_share if s.base_new_share > 0 else 0.0,
            "moe_lpr_stage2": s.replay_share, "moe_ct": s.ct_replay_share}.get(name, 0.0)
  if replay > 0:
    c.languages.use = tuple(s.new) + tuple(s.original)
    c.languages.original = tuple(s.original)
    c.data.replay_share = replay
  elif name == "base":
    c.languages.use = tuple(s.original)
  else:
    c.languages.use = tuple(s.new)
  c.upcycle["from"] = os.path.join(seed_dir(out, seed), "runs", source) if source else ""
  return c


def eval_config(run_dir: str, s: Settings, out: str, seed: int, progress: bool,
                step: int = -1, tasks: str = "perplexity,routing"):
  c = load_config("eval")
  c.checkpoint = run_dir
  c.step = step
  c.tasks = tasks  # routing only where the model has MoE layers
  c.perplexity.max_batches = s.eval_max_batches
  c.languages = ",".join(tuple(s.original) + tuple(s.new))
  c.batch_size = s.eval_batch_size
  c.seed = seed
  c.progress = progress
  c.perplexity.data_dir = os.path.join(out, "data")  # the held-out split, built once
  return c


# --------------------------------------------------------------------------- phases


def train(name: str, s: Settings, out: str, seed: int, mesh, clock: Clock, progress: bool) -> dict:
  from medmoe_jax.evaluation.lm import checkpoint_steps
  from medmoe_jax.train import Trainer
  c = run_config(name, s, out, seed)
  workdir = os.path.join(seed_dir(out, seed), "runs", name)
  done = checkpoint_steps(workdir)
  until = name == "moe_lpr_stage2"
  what = (f"until expert 0 > {s.lpr_stage2_target} in every layer, at most {c.train.steps} steps"
          if until else f"{c.train.steps} steps")
  with clock.phase(f"seed {seed}: train {name} ({what})"):
    t = Trainer(c, workdir, mesh=mesh).setup()
    # Without progress bars (not a terminal, or --no_progress), step lines from metrics.jsonl.
    watch = None if progress else StepLines(clock, f"seed {seed}: {name}", workdir,
                                            int(c.train.steps))
    try:
      if until:
        review = train_until_converged(t, s, workdir, clock, f"seed {seed}: {name}", progress)
      else:
        t.run(progress=progress)
    finally:
      t.close()
      if watch:
        watch.stop()
  hist = read_metrics(workdir)
  summary = loss_summary(hist)
  clock.log(f"seed {seed}: train {name}: loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}, "
            f"{summary['tokens']:.0f} tokens")
  out_ = {"config": c.name, "steps": int(hist[-1]["step"]), "languages": list(c.languages.use),
          "replay_share": float(c.data.replay_share), "resumed_at_step": max(done) if done else None,
          **summary}
  if until:
    out_["review"] = review
  return out_


def expert0_converged(rec: dict, target: float) -> bool:
  p = rec.get("expert0_prob_original")
  return bool(p) and all(x is not None and x > target for x in p)


def train_until_converged(t, s: Settings, workdir: str, clock: Clock, label: str,
                          progress: bool) -> dict:
  """MoE-LPR stage 2: train lpr_stage2_check steps at a time (the schedule is the cap's) until
  every layer's mean router probability of expert 0 on the original-language tokens of the last
  window exceeds the target, or the cap. Returns the per-layer curve and how it ended."""
  cap, check = int(t.config.train.steps), s.lpr_stage2_check
  while True:
    hist = read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
    last = hist[-1] if hist else None
    if last is not None:
      p = last.get("expert0_prob_original")
      clock.log(f"{label}: step {last['step']}, expert 0 probability on original-language tokens "
                "per layer " + ("n/a" if not p else "[" + ", ".join(
                    "n/a" if x is None else f"{x:.3f}" for x in p) + "]"))
      if expert0_converged(last, s.lpr_stage2_target) or last["step"] >= cap:
        break
    t.run(stop_at=(last["step"] if last else 0) + check, progress=progress)
  curve = [{"step": r["step"], "expert0_prob": r.get("expert0_prob_original"),
            "lpr_loss": r.get("lpr_loss")} for r in hist]
  return {"target": s.lpr_stage2_target, "cap": cap, "check_every": check,
          "steps": last["step"], "converged": expert0_converged(last, s.lpr_stage2_target),
          "curve": curve}


class StepLines:
  """Prints "train NAME: step i/N, loss x" every `every` seconds while a run trains, from the
  metrics.jsonl the trainer flushes at each log step (a thread; the trainer is left as it is)."""

  def __init__(self, clock: Clock, name: str, workdir: str, total: int, every: float = 20.0):
    import threading
    self.clock, self.name, self.total, self.every = clock, name, total, every
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.done = threading.Event()
    self.thread = threading.Thread(target=self._loop, daemon=True)
    self.thread.start()

  def _loop(self):
    last = None
    while not self.done.wait(self.every):
      try:
        with open(self.path, encoding="utf-8") as f:
          lines = [line for line in f if line.strip()]
        rec = json.loads(lines[-1]) if lines else None
      except (OSError, ValueError):
        continue
      if rec and rec["step"] != last:
        last = rec["step"]
        self.clock.log(f"train {self.name}: step {rec['step']}/{self.total}, loss "
                       f"{rec.get('loss', float('nan')):.3f}, {rec.get('tokens_per_sec', 0):.0f} tokens/s")

  def stop(self):
    self.done.set()
    self.thread.join()


def evaluate(name: str, s: Settings, out: str, seed: int, mesh, clock: Clock,
             progress: bool) -> dict:
  from medmoe_jax.evaluation.evaluator import Evaluator
  eval_dir = os.path.join(seed_dir(out, seed), "eval", name)
  run_dir = os.path.join(seed_dir(out, seed), "runs", name)
  with clock.phase(f"seed {seed}: eval {name}"):
    results = Evaluator(eval_config(run_dir, s, out, seed, progress), eval_dir, mesh=mesh).run()
  entry = results["evaluations"][-1]
  entry["figures"] = {k: os.path.relpath(os.path.join(eval_dir, v), out)
                      for k, v in entry.get("figures", {}).items()}
  return entry


def base_curve(s: Settings, out: str, seed: int, mesh, clock: Clock, progress: bool,
               final: dict) -> list[dict]:
  """Held-out perplexity of the base at each of its kept checkpoints (the last one is `final`,
  the base's own evaluation): [{step, perplexity}]."""
  from medmoe_jax.eval import Evaluator
  from medmoe_jax.evaluation.lm import checkpoint_steps
  run_dir = os.path.join(seed_dir(out, seed), "runs", "base")
  curve = []
  for step in checkpoint_steps(run_dir):
    if step == final["step"]:
      curve.append({"step": step, "perplexity": final["perplexity"]})
      continue
    eval_dir = os.path.join(seed_dir(out, seed), "eval", "base_curve", f"step{step}")
    with clock.phase(f"seed {seed}: eval base at step {step}"):
      res = Evaluator(eval_config(run_dir, s, out, seed, progress, step=step, tasks="perplexity"),
                      eval_dir, mesh=mesh).run()
    curve.append({"step": step, "perplexity": res["evaluations"][-1]["perplexity"]})
  return sorted(curve, key=lambda r: r["step"])


def run(s: Settings, out: str, *, progress: bool = True, clock: Clock | None = None) -> dict:
  """The whole experiment into `out`; returns results.json's content."""
  import jax

  from medmoe_jax import sharding
  from medmoe_jax.experiments import expand_report

  check(s)
  out = os.path.abspath(out)
  pin_settings(s, out, "an experiment")
  clock = clock or Clock()
  clock.log(f"workdir {out}; original {','.join(s.original)} -> new {','.join(s.new)}; "
            f"{'quick' if s.quick else 'default'} settings, seeds {', '.join(map(str, s.seeds))}")
  # Started before this process has threads (JAX's): a fork then is safe.
  spread = start_spread_out(s, out, clock) if s.spread_out else None
  per_seed = {}
  try:
    if not jax.config.jax_compilation_cache_dir:
      # Every seed runs the same programs: later seeds read their compiled code from here.
      jax.config.update("jax_compilation_cache_dir", os.path.join(out, "jax_cache"))
    prepare_corpus(s, out, clock)
    mesh = sharding.make_mesh(run_config("base", s, out, s.seeds[0]), jax.devices()[:1])
    # --quick: the "rbg" PRNG, whose initialisers compile about twice as fast as threefry's (the
    # random bits differ, which a structure check does not care about).
    with jax.default_prng_impl("rbg" if s.quick else jax.config.jax_default_prng_impl):
      for seed in s.seeds:
        trained, evaluated = {}, {}
        for name, _, _ in RUNS:
          trained[name] = train(name, s, out, seed, mesh, clock, progress)
          evaluated[name] = evaluate(name, s, out, seed, mesh, clock, progress)
          if name == "base":
            trained[name]["curve"] = base_curve(s, out, seed, mesh, clock, progress,
                                                evaluated[name])
        per_seed[seed] = expand_report.build_seed(s, trained, evaluated)
  except BaseException:
    if spread is not None and spread.poll() is None:
      spread.terminate()  # it saves a checkpoint and stops; rerunning resumes both
      spread.wait()
    raise
  so = finish_spread_out(spread, out, clock) if spread else None
  with clock.phase("report"):
    results = expand_report.build(s, per_seed, clock.phases, family_of(s, s.original + s.new))
    if so:
      results["spread_out"] = so
    results["wall_time"]["total"] = time.time() - clock.t0
    results["wall_time"]["phases_cpu"] = dict(clock.phases_cpu)
    results["wall_time"]["cpu_total"] = clock.cpu()
    expand_report.write(results, out)
  clock.log(f"done in {results['wall_time']['total']:.0f}s: {os.path.join(out, 'report.md')}")
  for c in results["claims"]:
    clock.log(f"claim {c['status']}: {c['claim']} ({c['numbers']})")
  return results


def spread_out_settings(s: Settings):
  """The spread-out model: the experiment's model width with 8 layers (--quick: its own tiny
  settings), the experiment's first seed and as many seeds."""
  from medmoe_jax.experiments import spread_out
  same = {} if s.quick else dict(d_model=s.d_model, num_heads=s.num_heads,
                                 num_kv_heads=s.num_kv_heads, d_ff=s.d_ff, seq_len=s.seq_len,
                                 batch_size=s.batch_size)
  return spread_out.Settings.make(s.quick, seeds=(s.seeds[0],), **same)


def start_spread_out(s: Settings, out: str, clock: Clock):
  """"Spread Out in the End" in its own process beside the seeds (it shares nothing with them):
  on 2 cores it runs on the one the seeds leave; its log is OUT/spread_out.log."""
  from medmoe_jax.experiments import spread_out
  d = os.path.join(out, "spread_out")
  clock.log(f"spread-out: started in its own process into {d} (log {d}.log)")
  return spread_out.start(spread_out_settings(s), d, d + ".log")


def finish_spread_out(proc, out: str, clock: Clock) -> dict:
  from medmoe_jax.experiments import spread_out
  d = os.path.join(out, "spread_out")
  with clock.phase("spread-out: wait for its process"):
    res = spread_out.finish(proc, d, d + ".log")
  clock.log(f"spread-out: {res['check']['status']}, {res['wall_time']:.0f} s wall, "
            f"{res['cpu_time']:.0f} CPU s in its process")
  return res


# --------------------------------------------------------------------------- CLI


def _langs(value: str) -> tuple:
  return tuple(x.strip() for x in value.split(",") if x.strip())


def parse_args(argv=None):
  p = faults.ArgumentParser(prog="python -m medmoe_jax.experiments.expand",
                            description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="output directory (report.md, results.json, "
                 "seed<k>/runs/, seed<k>/eval/, data/); rerunning into it resumes")
  p.add_argument("--quick", action="store_true", help="tiny model, budget and one seed (2-3 "
                 "min): checks that everything runs and the report is written, not the conclusions")
  p.add_argument("--corpus", choices=CORPORA, default=None, help="synthetic (default: "
                 "generated into OUT/corpus, medmoe_jax/data/synthetic.py) or sample (the "
                 "embedded 20-language sample)")
  p.add_argument("--corpus_docs", type=int, default=None,
                 help="synthetic corpus: documents per language (default 3000; --quick 60)")
  p.add_argument("--seed", type=int, default=0, help="first seed: seeds are seed, seed+1, ... "
                 "(init, data order, eval job)")
  p.add_argument("--num_seeds", type=int, default=None,
                 help="repeat the experiment for this many seeds (default 3; --quick 1)")
  p.add_argument("--original", type=_langs, default=None,
                 help="languages of the base model, comma-separated (default qaa,qab,qba; "
                 "with --corpus=sample en,zh,es)")
  p.add_argument("--new", type=_langs, default=None, help="languages to add, from families "
                 "the original ones do not cover (default qca,qcb,qda; sample: sw,ha,mg)")
  p.add_argument("--steps", type=int, default=None, help="expansion budget in steps, the same "
                 "for every method (default 150; --quick 10)")
  p.add_argument("--base_steps", type=int, default=None,
                 help="steps of the dense base run (default 400, 120 with --corpus=sample; "
                 "--quick 20)")
  p.add_argument("--lpr_stage2_cap", type=int, default=None,
                 help="MoE-LPR stage 2: at most this many steps (default 200; --quick 6)")
  p.add_argument("--spread_out", action="store_true", help="also run \"Spread Out in the End\" "
                 "(an all-layers hybrid-k model on 12 synthetic languages, "
                 "experiments/spread_out.py) into OUT/spread_out and report it")
  p.add_argument("--no_progress", action="store_true", help="no progress bars (phase lines only)")
  return p.parse_args(argv)


def main(argv=None) -> dict:
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  args = parse_args(argv)
  if args.quick:
    quick_xla_flags()
  n = args.num_seeds if args.num_seeds is not None else (1 if args.quick else 3)
  s = Settings.make(args.quick, seeds=tuple(range(args.seed, args.seed + max(n, 0))),
                    corpus=args.corpus, corpus_docs=args.corpus_docs,
                    original=args.original, new=args.new, steps=args.steps,
                    base_steps=args.base_steps, lpr_stage2_cap=args.lpr_stage2_cap,
                    spread_out=args.spread_out or None)
  try:
    return run(s, args.workdir, progress=not args.no_progress and sys.stderr.isatty())
  except ExperimentError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  from medmoe_jax.training.faults import exit_codes
  exit_codes(main)()
