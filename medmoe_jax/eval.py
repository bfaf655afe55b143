"""Evaluate: `python -m medmoe_jax.eval --config=configs/eval.py --config.checkpoint=DIR --workdir=OUT`.

Evaluates a training checkpoint (DIR: the run's workdir or one of its checkpoints/<step>) on
medical multiple choice (generative, the paper's protocol, and log-likelihood, lm-eval's),
held-out perplexity per language, routing per language and layer, and, given
`--config.baseline_checkpoint`, forgetting against a baseline. Writes OUT/results.json (every
number, the configs, the step, the seed), OUT/report.md (tables and figures),
OUT/figures/*.png and OUT/predictions/step_<N>/*.jsonl (each item's prompt size, output,
extracted letter). With `--config.follow=True` it watches the run and evaluates every new
checkpoint as it appears, appending to results.json; rerun, it skips steps already evaluated.
"""
from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

from medmoe_jax import paths
from medmoe_jax.evaluation.evaluator import Evaluator, mcq_files, run, validate  # noqa: F401 (re-exported)
from medmoe_jax.training.faults import run_absl

FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  c = FLAGS.config
  paths.resolve_eval_paths(c)  # relative paths mean: relative to where the command runs
  workdir = paths.absolute(FLAGS.workdir or os.path.join("workdir", "eval"))
  results = run(c, workdir)  # faults: one line and an exit code (training/faults.exit_codes)
  latest = results["evaluations"][-1]
  summary = {k: v.get("major_average") for k, v in (latest.get("mcq") or {}).items()}
  print(f"done: step {latest['step']}; major-language accuracy {summary}; held-out perplexity "
        f"{latest.get('perplexity_overall')}; {os.path.join(workdir, 'report.md')}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/eval.py", "Eval config file (get_config).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory (results.json, report.md, figures/); "
                      "default ./workdir/eval.")
  run_absl(main)
