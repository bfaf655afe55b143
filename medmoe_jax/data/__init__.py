"""Data: local corpora -> ArrayRecord (tfds builder, no TensorFlow) -> grain mixture/pack/batch.

    corpus.train_dataset(data, tokenizer, process_index, process_count)
                                   -> grain.IterDataset of the trainer's batches
    corpus.prepare(data, tokenizer) -> statistics (python -m medmoe_jax.data prepare)
    corpus.load_splits(data) -> {"train", "validation"}: ConcatSource of all sources
    (data: the run's specs.DataSpec, from medmoe_jax.config.data_spec(config, workdir))
    sources.build_source(spec, data_dir, ...) -> BuiltSource (one source, built once)
    sources.build_text_source(files, data_dir, name) -> {"train", "validation"}: TextSource
    tokenizer.load_tokenizer("sample" | .model | tokenizer.json | HF dir) -> Tokenizer
    pipeline.make_lm_dataset(source, languages=..., tokenizer=..., seq_len=..., batch_size=...,
                             seed=...) -> grain.IterDataset of dict batches
    pipeline.make_eval_batches(...) -> the same batches over a split, once, in order

Modules: specs (config.data.sources), formats (files -> records), langid (detector), sources
(builder + readers), pipeline (grain), tokenizer, corpus (a config's corpus), __main__ (CLI).
"""

import importlib

# Lazy re-exports: `python -m medmoe_jax.data.tokenizer` and light users (the tokenizer alone,
# config validation) do not pay for importing grain and tfds.
_EXPORTS = {
    "make_eval_batches": "pipeline",
    "make_lm_dataset": "pipeline",
    "mixture_weights": "pipeline",
    "group_weights": "pipeline",
    "ConcatSource": "sources",
    "TextSource": "sources",
    "build_source": "sources",
    "build_text_source": "sources",
    "read_jsonl": "sources",
    "sample_files": "sources",
    "SourceSpec": "specs",
    "parse_sources": "specs",
    "HFTokenizer": "tokenizer",
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "train_sample_tokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
    "DataSpec": "specs",
    "load_splits": "corpus",
    "prepare": "corpus",
    "train_dataset": "corpus",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
