"""Data: local JSONL -> ArrayRecord (tfds builder, no TensorFlow) -> grain mixture/pack/batch.

    sources.build_text_source(files, data_dir, name) -> {"train", "validation"}: TextSource
    tokenizer.load_tokenizer("sample" | path) -> Tokenizer
    pipeline.make_lm_dataset(source, languages=..., tokenizer=..., seq_len=..., batch_size=...,
                             seed=...) -> grain.IterDataset of dict batches
    pipeline.make_eval_batches(...) -> the same batches over a split, once, in order
"""

import importlib

# Lazy re-exports: `python -m medmoe_jax.data.tokenizer` and light users (the tokenizer alone)
# do not pay for importing grain and tfds.
_EXPORTS = {
    "make_eval_batches": "pipeline",
    "make_lm_dataset": "pipeline",
    "mixture_weights": "pipeline",
    "TextSource": "sources",
    "build_text_source": "sources",
    "read_jsonl": "sources",
    "sample_files": "sources",
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "train_sample_tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
