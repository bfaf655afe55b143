"""The diagnosis of MoE-LPR stage 2 in docs/expand_report.md ("Diagnosis"): seed 0 of the expand
experiment's default settings (corpus, base, stage 1 by the experiment's own code), then stage 2
from that stage-1 checkpoint with one setting changed per variant, then the original languages'
held-out perplexity with the router's routing and with expert 0 forced (weight 1).

  python docs/expand_report/lpr_stage2_diagnosis.py OUT setup
  python docs/expand_report/lpr_stage2_diagnosis.py OUT stage2 default constlr lpr100 lmonly b2
  python docs/expand_report/lpr_stage2_diagnosis.py OUT ppl base s2_default s2_constlr
"""
import dataclasses, json, os, sys, time
import numpy as np
OUT = os.path.abspath(sys.argv[1])
from medmoe_jax.experiments import expand
from medmoe_jax.experiments.common import Clock, read_metrics

s = expand.Settings.make(seeds=(0,))
_run_config = expand.run_config


def run_config(name, *args, **kwargs):
  """The experiment's config, with the published run's Adam beta2 (0.95; the MoE-LPR preset has
  0.999 since) for both MoE-LPR stages, so that `default` reproduces the published curve."""
  c = _run_config(name, *args, **kwargs)
  if name.startswith("moe_lpr"):
    c.train.b2 = 0.95
  return c


expand.run_config = run_config
clock = Clock()

def setup():
  import jax
  from medmoe_jax import sharding
  jax.config.update("jax_compilation_cache_dir", os.path.join(OUT, "jax_cache"))
  expand.prepare_corpus(s, OUT, clock)
  mesh = sharding.make_mesh(expand.run_config("base", s, OUT, 0), jax.devices()[:1])
  return mesh

VARIANTS = {
  "default": {},
  "constlr": {"train.min_lr_ratio": 1.0},
  "lpr100": {"moe.lpr_loss_weight": 100.0},
  "lmonly": {"moe.lpr_loss_weight": 0.0},
  "b2": {"train.b2": 0.999},
  "long": {"train.steps": 800},
  "longconst": {"train.steps": 800, "train.min_lr_ratio": 1.0},
}

def stage2(name, mesh):
  from medmoe_jax.train import Trainer
  c = run_config("moe_lpr_stage2", s, OUT, 0)
  for k, v in VARIANTS[name].items():
    node = c
    *ps, leaf = k.split(".")
    for p in ps: node = node[p]
    node[leaf] = v
  c.train.log_every = 10
  c.train.checkpoint_every = int(c.train.steps)
  wd = os.path.join(OUT, "seed0", "runs", "s2_" + name)
  t0 = time.time()
  t = Trainer(c, wd, mesh=mesh).setup()
  try:
    t.run(progress=False)
  finally:
    t.close()
  hist = read_metrics(wd)
  print(f"== {name} ({time.time()-t0:.0f}s) lr={c.train.lr} min_lr_ratio={c.train.min_lr_ratio} lpr_w={c.moe.lpr_loss_weight}")
  for r in hist:
    if r["step"] % 50 == 0 or r["step"] == hist[-1]["step"]:
      print(f"  step {r['step']}: p0 {r.get('expert0_prob_original')} lpr {r.get('lpr_loss'):.3f} lm {r.get('loss'):.3f}")
  return wd

def ppl_eval(wd, mesh):
  from medmoe_jax.evaluation.lm import LanguageModel
  from medmoe_jax.evaluation import perplexity
  lm = LanguageModel.load(wd, mesh=mesh, batch_size=8)
  src = perplexity.heldout_source(lm.run.data, os.path.join(OUT, "data"))
  langs = list(s.original)
  def run(model):
    res = perplexity.evaluate(model.token_scores, src, languages=langs,
                              model_lang_ids=[model.lang_index(l) for l in langs],
                              tokenizer=model.tokenizer, seq_len=s.seq_len, batch_size=8)
    nll = sum(r["nll"] * r["tokens"] for r in res.values()) / sum(r["tokens"] for r in res.values())
    return float(np.exp(nll)), {l: round(r["ppl"], 4) for l, r in res.items()}
  out = {"routed": run(lm)}
  if lm.spec.moe_layer_indices:
    moe = lm.spec.moe
    table = tuple(0 if l in s.original else -1 for l in lm.languages)
    spec = dataclasses.replace(lm.spec, moe=dataclasses.replace(moe, language_routing="hard", lang_to_expert=table))
    run2 = dataclasses.replace(lm.run, model=spec)
    forced = LanguageModel.from_params(run2, lm.params, mesh=mesh, batch_size=8)
    out["expert0_forced"] = run(forced)
  print(f"ppl {wd}: {json.dumps(out)}", flush=True)
  return out

if __name__ == "__main__":
  what = sys.argv[2]
  mesh = setup()
  if what == "setup":
    for name in ("base", "moe_lpr_stage1"):
      expand.train(name, s, OUT, 0, mesh, clock, False)
  elif what == "stage2":
    for v in sys.argv[3:]:
      stage2(v, mesh)
  elif what == "ppl":
    for wd in sys.argv[3:]:
      ppl_eval(os.path.join(OUT, "seed0", "runs", wd), mesh)
