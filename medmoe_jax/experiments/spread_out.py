""""Spread Out in the End": `python -m medmoe_jax.experiments.spread_out --workdir=OUT [--quick]`.

Apollo-MoE's analysis model (configs/hybrid_k12_all.py: MoE in every layer, hybrid-k routing,
top-2 not renormalised) at a small size, on many synthetic languages of several families
(medmoe_jax/data/synthetic.py): one expert per family. The paper finds routing language-general
in the early layers and language-specific in the last ones; here the eval job's own-family share
of routing assignments per layer (inference routing, no forcing, held-out text) checks that the
mean over the last quarter of the layers exceeds the first quarter's (PASS/FAIL, with numbers).

  1. corpus   families x languages_per_family synthetic languages, a BPE tokenizer on them;
  2. base     a dense model on all of them (as the paper upcycles a pretrained dense model);
  3. hybrid   upcycled to hybrid_k12_all (every expert a copy of the FFN) with family experts,
              trained on all the languages;
  4. eval     routing per language and layer; the own-family profile, its mean ± sd over seeds,
              the quarter check per seed and on the mean, a figure.

Also a phase of the expansion experiment (`python -m medmoe_jax.experiments.expand --spread_out`),
whose report then carries this section. OUT/spread_out/ keeps corpus/, data/, seed<k>/runs and
seed<k>/eval; rerunning resumes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from medmoe_jax.experiments import common, expand_figures
from medmoe_jax.experiments.common import ExperimentError

FORMAT = "medmoe_jax.experiments.spread_out/1"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that decides the spread-out numbers (saved in OUT/spread_out/settings.json)."""
  families: int = 4
  languages_per_family: int = 3   # 12 languages, as the paper's 12-language analysis model
  corpus_docs: int = 1000
  corpus_seed: int = 1            # not the expansion corpus's languages
  tokenizer_vocab: int = 1024
  seeds: tuple = (0,)
  d_model: int = 96              # the expansion experiment's width
  num_layers: int = 8             # quarters of 2 layers
  num_heads: int = 4
  num_kv_heads: int = 2
  d_ff: int = 288
  seq_len: int = 128
  batch_size: int = 8
  base_steps: int = 200
  steps: int = 200
  eval_batch_size: int = 8
  eval_max_batches: int = 8       # held-out batches a language (routing is a share: 8 x 8 rows)
  quick: bool = False

  @classmethod
  def make(cls, quick: bool = False, **overrides) -> "Settings":
    base = dict(QUICK, quick=True) if quick else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**base)


QUICK = dict(families=3, languages_per_family=2, corpus_docs=60, tokenizer_vocab=512, d_model=32,
             num_layers=4, num_heads=2, num_kv_heads=1, d_ff=64, seq_len=64, batch_size=4,
             base_steps=10, steps=10, eval_batch_size=4, eval_max_batches=2)


def check(s: Settings) -> None:
  if s.num_layers < 4:
    raise ExperimentError(f"--num_layers must be >= 4 (quarters of the layers are "
                                 f"compared), got {s.num_layers}")
  if s.families < 2:
    raise ExperimentError(f"--families must be >= 2, got {s.families}")
  if not s.seeds or len(set(s.seeds)) != len(s.seeds):
    raise ExperimentError(f"--seed/--num_seeds: need distinct seeds, got {s.seeds}")
  try:
    corpus_settings(s).codes()
  except ValueError as e:
    raise ExperimentError(f"--families/--languages_per_family: {e}") from None


def corpus_settings(s: Settings):
  from medmoe_jax.data import synthetic
  return synthetic.Settings(seed=s.corpus_seed, families=s.families,
                            languages_per_family=s.languages_per_family, docs=s.corpus_docs)


def run_config(name: str, s: Settings, out: str, seed: int):
  """"base": configs/dense.py; "hybrid": configs/hybrid_k12_all.py with one expert per family
  of the corpus, upcycled from the base. Both on every language of the corpus."""
  from medmoe_jax.data import synthetic
  c = common.load_config("dense" if name == "base" else "hybrid_k12_all")
  c.name = f"spread_out_{name}"
  c.seed = seed
  steps = s.base_steps if name == "base" else s.steps
  c.model.update(dict(d_model=s.d_model, num_layers=s.num_layers, num_heads=s.num_heads,
                      num_kv_heads=s.num_kv_heads, d_ff=s.d_ff, vocab_size=s.tokenizer_vocab))
  c.data.update(dict(seq_len=s.seq_len, batch_size=s.batch_size,
                     data_dir=os.path.join(out, "data"),
                     tokenizer=os.path.join(out, "corpus", "tokenizer.model")))
  c.train.update(dict(steps=steps, log_every=max(1, min(10, steps // 10)),
                      checkpoint_every=steps, keep_checkpoints=1, async_checkpoint=False))
  synthetic.configure(c, os.path.join(out, "corpus"))
  if name == "hybrid":
    c.moe.num_experts = s.families
    c.languages.assignment = "family"
    c.upcycle["from"] = os.path.join(out, f"seed{seed}", "runs", "base")
  return c


def train(name: str, s: Settings, out: str, seed: int, mesh, clock, progress: bool) -> dict:
  from medmoe_jax.train import Trainer
  c = run_config(name, s, out, seed)
  workdir = os.path.join(out, f"seed{seed}", "runs", name)
  with clock.phase(f"spread-out seed {seed}: train {name} ({c.train.steps} steps)"):
    t = Trainer(c, workdir, mesh=mesh).setup()
    try:
      t.run(progress=progress)
    finally:
      t.close()
  return common.loss_summary(common.read_metrics(workdir))


def evaluate(s: Settings, out: str, seed: int, mesh, clock, progress: bool) -> dict:
  from medmoe_jax.evaluation.evaluator import Evaluator
  c = common.load_config("eval")
  c.checkpoint = os.path.join(out, f"seed{seed}", "runs", "hybrid")
  c.tasks = "perplexity,routing"
  c.perplexity.max_batches = s.eval_max_batches
  c.perplexity.data_dir = os.path.join(out, "data")
  c.batch_size = s.eval_batch_size
  c.seed = seed
  c.progress = progress
  eval_dir = os.path.join(out, f"seed{seed}", "eval", "hybrid")
  with clock.phase(f"spread-out seed {seed}: eval hybrid"):
    res = Evaluator(c, eval_dir, mesh=mesh).run()
  return res["evaluations"][-1]["routing"]


def summarize(per_seed_routing: dict) -> dict:
  """Per seed: the own-family share per layer (mean over languages) and its quarter check; over
  the seeds: the mean profile ± sd, each language's mean profile, and the check on the mean."""
  seeds = list(per_seed_routing)
  first = per_seed_routing[seeds[0]]
  per_seed = {}
  for k, rt in per_seed_routing.items():
    prof = rt["average"]["own_share"]
    per_seed[str(k)] = {"own_share": prof, "check": expand_figures.spread_out_check(prof)}
  mean, sd = expand_figures.per_layer_stats([v["own_share"] for v in per_seed.values()])
  langs = {l: expand_figures.per_layer_stats(
      [per_seed_routing[k]["languages"][l]["own_share"] for k in seeds
       if l in per_seed_routing[k]["languages"]])[0] for l in first["languages"]}
  check_ = expand_figures.spread_out_check(mean)
  check_["held_in_seeds"] = sum(v["check"]["status"] == "PASS" for v in per_seed.values())
  return {"layers": first["layers"], "experts": first["experts"],
          "uniform_share": first["average"]["uniform_share"],
          "own_share_mean": mean, "own_share_sd": sd, "own_share_by_language": langs,
          "families": {l: v["own_expert_name"] for l, v in first["languages"].items()},
          "check": check_, "per_seed": per_seed}


def run(s: Settings, out: str, *, progress: bool = False, clock=None, mesh=None) -> dict:
  """The spread-out experiment into `out`; returns its results (also OUT/results.json)."""
  import jax

  from medmoe_jax import sharding
  from medmoe_jax.data import synthetic

  check(s)
  out = os.path.abspath(out)
  clock = clock or common.Clock()
  common.pin_settings(s, out, "a spread-out run")
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "jax_cache"))
  t0, cpu0 = time.time(), common.cpu_seconds()
  corpus = os.path.join(out, "corpus")
  if not os.path.exists(os.path.join(corpus, "tokenizer.model")):
    with clock.phase("spread-out: corpus"):
      cp = synthetic.Corpus(corpus_settings(s))
      cp.write(corpus)
      synthetic.train_corpus_tokenizer(cp, corpus, s.tokenizer_vocab)
  if mesh is None:
    mesh = sharding.make_mesh(run_config("base", s, out, s.seeds[0]), jax.devices()[:1])
  routing, training = {}, {}
  with jax.default_prng_impl("rbg" if s.quick else jax.config.jax_default_prng_impl):
    for seed in s.seeds:
      training[str(seed)] = {n: train(n, s, out, seed, mesh, clock, progress)
                             for n in ("base", "hybrid")}
      routing[seed] = evaluate(s, out, seed, mesh, clock, progress)
  res = summarize(routing)
  res.update(format=FORMAT, settings=json.loads(json.dumps(dataclasses.asdict(s))),
             training=training, wall_time=time.time() - t0, cpu_time=common.cpu_seconds() - cpu0)
  fig = expand_figures.own_share_figure(
      res["layers"], res["own_share_mean"], res["own_share_sd"], res["uniform_share"],
      os.path.join(out, "own_share.png"),
      f"All-layers hybrid-k, {len(res['families'])} languages in {s.families} families: "
      "own-family share", res["own_share_by_language"])
  res["figure"] = os.path.basename(fig) if fig else None
  from medmoe_jax.evaluation import report as eval_report
  eval_report.write_json(os.path.join(out, "results.json"), res)
  with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
    f.write("# Spread Out in the End\n\n" + "\n".join(render(res, "")) + "\n")
  c = res["check"]
  clock.log(f"spread-out check {c['status']}: own-family share, last quarter "
            f"{_f(c['last_quarter'])} vs first quarter {_f(c['first_quarter'])}")
  return res


def _f(x) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def render(res: dict, figure_prefix: str) -> list[str]:
  """The report section's lines (figure links relative to the report)."""
  s, c = res["settings"], res["check"]
  n = len(res["per_seed"])
  q = c["layers_per_quarter"]
  L = [f"Apollo-MoE's analysis model (configs/hybrid_k12_all.py: MoE in every layer, hybrid-k, "
       f"top-2) at d_model {s['d_model']}, {s['num_layers']} layers, one expert per family, "
       f"upcycled from a dense base ({s['base_steps']} steps) and trained {s['steps']} steps on "
       f"{len(res['families'])} synthetic languages in {s['families']} families "
       f"({s['corpus_docs']} documents a language). Own-family share: the share of each "
       "language's token-to-expert assignments (inference routing, no forcing, held-out text) "
       f"that land on its family's expert, mean over the languages (uniform "
       f"{res['uniform_share']:.3f}; at most 0.5 with top-2)"
       + (f", mean ± sd over {n} seeds" if n > 1 else "") + ".", "",
       f"**{c['status']}**: the mean over the last quarter of the layers ({q} layer"
       f"{'s' if q > 1 else ''}) exceeds the first quarter's: {_f(c['last_quarter'])} vs "
       f"{_f(c['first_quarter'])}."
       + (f" Per seed: {c['held_in_seeds']} of {n} PASS (" + ", ".join(
           f"seed {k} {v['check']['status']} {_f(v['check']['last_quarter'])} vs "
           f"{_f(v['check']['first_quarter'])}" for k, v in res["per_seed"].items()) + ")."
          if n > 1 else ""), ""]
  sd = res["own_share_sd"]
  L += ["| layer | " + " | ".join(str(x) for x in res["layers"]) + " |",
        "|---|" + "---|" * len(res["layers"]),
        "| own-family share | " + " | ".join(
            f"{m:.3f}" + ("" if sd is None else f" ± {e:.3f}")
            for m, e in zip(res["own_share_mean"], sd or [None] * len(res["layers"]))) + " |", ""]
  if res.get("figure"):
    L += [f"![own-family share per layer]({figure_prefix}{res['figure']})", ""]
  L += [f"Wall time {res['wall_time']:.0f} s, CPU time {res['cpu_time']:.0f} s.", ""]
  return L


def start(s: Settings, out: str, log_path: str):
  """The spread-out experiment in its own process (it needs nothing from the expansion runs, so
  it uses a second core beside them): returns the Popen; `finish` waits and reads its results."""
  import subprocess
  common.pin_settings(s, out, "a spread-out run")
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH")) if x)
  log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
  return subprocess.Popen([sys.executable, "-m", "medmoe_jax.experiments.spread_out",
                           "--workdir", out, "--resume"], stdout=log, stderr=subprocess.STDOUT,
                          env=env)


def finish(proc, out: str, log_path: str) -> dict:
  rc = proc.wait()
  if rc != 0:
    with open(log_path, encoding="utf-8") as f:
      tail = f.read()[-2000:]
    raise RuntimeError(f"the spread-out process failed (exit {rc}); {log_path}:\n{tail}")
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def parse_args(argv=None):
  from medmoe_jax.training import faults
  p = faults.ArgumentParser(prog="python -m medmoe_jax.experiments.spread_out",
                            description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="output directory (report.md, results.json, "
                 "own_share.png, corpus/, seed<k>/); rerunning into it resumes")
  p.add_argument("--quick", action="store_true", help="tiny model and corpus: checks it runs")
  p.add_argument("--seed", type=int, default=0, help="first seed")
  p.add_argument("--num_seeds", type=int, default=None, help="seeds (default 1)")
  p.add_argument("--steps", type=int, default=None, help="hybrid-k training steps (default 200)")
  p.add_argument("--num_layers", type=int, default=None, help="layers, all MoE (default 8)")
  p.add_argument("--resume", action="store_true", help="take every setting from the workdir's "
                 "settings.json (how the expansion experiment starts this in its own process)")
  return p.parse_args(argv)


def load_settings(out: str) -> Settings:
  path = os.path.join(out, "settings.json")
  if not os.path.isfile(path):
    raise ExperimentError(f"--resume: {path} not found")
  with open(path, encoding="utf-8") as f:
    d = json.load(f)
  return Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def main(argv=None) -> dict:
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  args = parse_args(argv)
  if args.quick:
    common.quick_xla_flags()
  n = args.num_seeds or 1
  try:
    s = (load_settings(args.workdir) if args.resume else
         Settings.make(args.quick, seeds=tuple(range(args.seed, args.seed + n)),
                       steps=args.steps, num_layers=args.num_layers))
    return run(s, args.workdir)
  except ExperimentError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  from medmoe_jax.training.faults import exit_codes
  exit_codes(main)()
