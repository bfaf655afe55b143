"""Data commands of a config.

  python -m medmoe_jax.data prepare --config=configs/post_moe.py [--workdir=DIR]
      Builds every source of config.data.sources into ArrayRecord (once: a no-op when built),
      then prints and saves statistics (<data_dir>/stats_<config.name>.json): documents and
      tokens per language and source, detector-assigned languages, skipped records.

  python -m medmoe_jax.data tokenizer --config=configs/post_moe.py [--out=PATH]
      [--vocab_size=N] [--max_docs=N]
      Trains a sentencepiece BPE model (byte fallback) on the text of the config's sources;
      vocab_size defaults to config.model.vocab_size. Use it with --config.data.tokenizer=PATH.

The data directory is config.data.data_dir, or <workdir>/data as for training (workdir
defaults to ./workdir/<config.name>, the same default as `python -m medmoe_jax.train`).
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/post_moe.py", "Config file (Python, get_config).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory; the data directory defaults to <workdir>/data.")
flags.DEFINE_string("out", None, "tokenizer: output .model path "
                    "(default <data_dir>/tokenizer_<config.name>_<vocab_size>.model).")
flags.DEFINE_integer("vocab_size", None, "tokenizer: vocabulary size (default config.model.vocab_size).")
flags.DEFINE_integer("max_docs", 2_000_000, "tokenizer: train on at most this many documents "
                     "(a seeded uniform sample when the sources hold more).")

COMMANDS = ("prepare", "tokenizer")


def _prepare(c, data) -> None:
  from medmoe_jax.data import corpus, tokenizer

  tok = tokenizer.load_tokenizer(data.tokenizer) if data.tokenizer else None
  if tok is None:
    print("config.data.tokenizer is empty: documents are counted, tokens are not")
  t0 = time.perf_counter()
  corpus.prepare(data, tok)
  print(f"prepare took {time.perf_counter() - t0:.1f} s")


def _tokenizer(c, data) -> None:
  from medmoe_jax.data import sources, tokenizer

  vocab = FLAGS.vocab_size or int(c.model.vocab_size)
  out = FLAGS.out or os.path.join(data.data_dir, f"tokenizer_{c.name}_{vocab}.model")
  template = data.chat()
  texts = (t for spec in data.sources for t in sources.iter_texts(spec, data.on_error, template))
  docs = tokenizer.sample_documents(texts, FLAGS.max_docs)
  t0 = time.perf_counter()
  tok = tokenizer.train_tokenizer(docs, out, vocab)
  print(f"wrote {out}: vocab_size={tok.vocab_size}, trained on {len(docs):,} documents in "
        f"{time.perf_counter() - t0:.1f} s; use it with --config.data.tokenizer={out}")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m medmoe_jax.data {{{'|'.join(COMMANDS)}}} "
                         "--config=CONFIG [flags]")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # tfds logs every build step at INFO
  from medmoe_jax import config as cfg_lib
  from medmoe_jax import paths

  c = FLAGS.config
  paths.resolve_config_paths(c)
  cfg_lib.validate(c)
  workdir = paths.absolute(FLAGS.workdir or os.path.join("workdir", c.name))
  {"prepare": _prepare, "tokenizer": _tokenizer}[argv[1]](c, cfg_lib.data_spec(c, workdir))


if __name__ == "__main__":
  from medmoe_jax.training.faults import run_absl
  run_absl(main)
