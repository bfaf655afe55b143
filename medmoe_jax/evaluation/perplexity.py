"""Per-language perplexity on held-out text, in one pass that can also collect routing.

The held-out text is the "validation" split of the run's corpus (data/sources.py: every tenth
record of each file), packed into rows exactly like training batches (data/pipeline.py
`make_eval_batches`), one language at a time. A target counts where training's loss would count
it: the next token of the same document (training.step.token_targets), so the numbers are the
training loss's, on text the model never trained on. So each document starts as training rows
start it: with the tokenizer's BOS (sentencepiece and Llama-style tokenizers), or with EOS for a
tokenizer that has no BOS (Qwen2's `<|endoftext|>`, the token that precedes a document in its
packed pretraining text and the harness's rolling prefix). Neither official code base has a
held-out perplexity: ApolloMoE scores by generation, MoE-LPR through lm-evaluation-harness.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from medmoe_jax.data import corpus
from medmoe_jax.data.pipeline import make_eval_batches
from medmoe_jax.data.specs import DataSpec
from medmoe_jax.training.step import token_targets


def heldout_source(data: DataSpec, data_dir: str):
  """The run's validation split, built under data_dir (reused when already built) by the same
  code and settings as training's: the run's data spec (its sources, `validation_every` and
  language detection), only the directory changed. Rebuilding it any other way could hand the
  eval text the run trained on."""
  return corpus.load_splits(dataclasses.replace(data, data_dir=data_dir))["validation"]


def target_weights(batch: dict) -> np.ndarray:
  """[B, S] 1.0 where position t predicts a real next token of its own document: the training
  loss's own weights (training.step.token_targets), as float64 numpy."""
  _, w = token_targets({k: np.asarray(batch[k]) for k in ("tokens", "segment_ids", "loss_mask")})
  return np.asarray(w, np.float64)


def evaluate(score: Callable[[dict], dict], source, *, languages: Sequence[str], model_lang_ids:
             Sequence[int], tokenizer, seq_len: int, batch_size: int, max_batches: int = 0,
             on_routing: Callable | None = None, progress=None) -> dict:
  """Perplexity per language of `source` (a TextSource split).

  score(batch) -> {"logprobs" [B, S], ...}: the model (LanguageModel.token_scores). languages:
  the text languages to evaluate (each must have records); model_lang_ids[i]: languages[i]'s
  index in the model's language list (-1 if the model has none). max_batches > 0 caps the
  batches per language. on_routing(scores, batch): called with every batch's scores (routing
  analysis shares the pass).
  Returns {lang: {"nll", "ppl", "tokens", "batches"}}.
  """
  remap = np.asarray(list(model_lang_ids) + [-1], np.int32)  # index -1 -> -1
  out = {}
  for li, lang in enumerate(languages):
    nll, tokens, nb = 0.0, 0.0, 0
    for batch in make_eval_batches(source, languages=list(languages), tokenizer=tokenizer,
                                   seq_len=seq_len, batch_size=batch_size, language=lang):
      model_batch = dict(batch, lang_ids=remap[batch["lang_ids"]])
      scores = score(model_batch)
      w = target_weights(batch)
      nll -= float(np.sum(scores["logprobs"] * w))
      tokens += float(np.sum(w))
      if on_routing is not None:
        on_routing(scores, batch)
      nb += 1
      if progress is not None:
        progress.update(1)
      if max_batches and nb >= max_batches:
        break
    mean = nll / max(tokens, 1.0)
    out[lang] = {"nll": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": int(tokens), "batches": nb}
  return out


def heldout_languages(source, wanted: Sequence[str]) -> list[str]:
  """The wanted languages that have held-out records, in the order given."""
  counts = source.lang_counts()
  return [l for l in wanted if counts.get(l, 0) > 0]
