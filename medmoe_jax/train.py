"""Train: `python -m medmoe_jax.train --config=configs/post_moe.py [--workdir=DIR]`.

With no other flags this trains the tiny Post-MoE model on the embedded multilingual sample on a
laptop CPU in minutes. Running the same command again resumes from the last checkpoint.
"""
from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

from medmoe_jax import distributed, dryrun, paths
from medmoe_jax.training.compile_cache import compilation_cache_dir, enable_compilation_cache
from medmoe_jax.training.faults import run_absl
# Trainer, data_files and cpu_allocator_hint are re-exported: tests and scripts name them here.
from medmoe_jax.training.trainer import Trainer, cpu_allocator_hint, data_files, train  # noqa: F401

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/post_moe.py", "Config file (Python, get_config).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, metrics; default ./workdir/<config.name>. "
                    "A gs:// URL keeps checkpoints there and logs in --logdir.")
# Scaling out (README "Scaling out"; medmoe_jax/distributed.py, medmoe_jax/dryrun.py).
flags.DEFINE_string("logdir", None, "With a gs:// --workdir: local directory for metrics.jsonl, "
                    "TensorBoard and config.json (process 0); default /tmp/medmoe_jax/<config.name>.")
flags.DEFINE_bool("dry_run", False, "Compile the train step for --topology or --num_devices on "
                  "fake CPU devices and report memory, FLOPs and the MFU-bound step time; no training.")
flags.DEFINE_string("topology", None, "Dry run target: v5p-N (TensorCores), v6e-N (chips), h100-N.")
flags.DEFINE_integer("num_devices", None, "Dry run target: N devices (no peak, no step time).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0's "
                    "coordinator (not needed on TPU pods or under SLURM, which are detected).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's id in [0, num_processes).")
flags.DEFINE_string("compilation_cache", None, "XLA's persistent compilation cache: a directory or "
                    "gs:// URL; default $JAX_COMPILATION_CACHE_DIR if set, else "
                    "<workdir>/compilation_cache (with a gs:// --workdir, there, shared by all "
                    "hosts); 'none' turns it off.")


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  c = FLAGS.config
  paths.resolve_config_paths(c)  # relative paths mean: relative to where the command runs
  if FLAGS.dry_run:  # before anything starts JAX: the dry run sets up fake devices
    if FLAGS.compilation_cache is not None:  # only where asked: a dry run writes no workdir
      enable_compilation_cache(compilation_cache_dir(FLAGS.compilation_cache, ""))
    raise SystemExit(dryrun.main(c, FLAGS.topology, FLAGS.num_devices))
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax
  workdir = paths.absolute(FLAGS.workdir or os.path.join("workdir", c.name))
  enable_compilation_cache(compilation_cache_dir(FLAGS.compilation_cache, workdir,
                                                jax.config.jax_compilation_cache_dir))
  train(c, FLAGS.workdir, logdir=FLAGS.logdir)


if __name__ == "__main__":
  run_absl(main)
