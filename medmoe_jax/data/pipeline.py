"""grain pipeline: language mixture -> tokenize -> split -> pack -> batch, resumable.

Batch format (numpy, each [batch_size, seq_len]):
  tokens      int32  token ids (0 = pad)
  segment_ids int32  1, 2, 3, ... per packed document chunk within a row; 0 = padding
  positions   int32  0, 1, ... within each chunk
  lang_ids    int32  index of the record's language in `languages`; -1 on padding
  loss_mask   int32  1 on real tokens, 0 on padding. The loss must still drop targets that
                     cross a segment boundary (segment_ids[t+1] != segment_ids[t]).

Why this shape of pipeline: everything up to tokenisation is a grain MapDataset (random
access), so the mixture, the per-epoch reshuffles and the sharding are pure functions of an
index; the iterator state is then a handful of integers (JSON, saved with checkpoints), and a
restored iterator replays exactly the batches an uninterrupted one would have produced.

Mixture: each selected language is its own reshuffled-every-epoch, infinitely repeated stream of
documents; grain's `MapDataset.mix` interleaves them with weights p_l ~ n_l^(1/T) (n_l =
documents of language l in the split; T=1 keeps natural proportions, larger T flattens toward
uniform, which up-samples minor languages). Sharding takes every shard_count-th element of the
global mixed stream, so the shards partition one stream and each process reads only its part.

Each document becomes BOS + tokens + EOS, cut into chunks of at most seq_len tokens, and chunks
are packed into rows by grain's first-fit packing, with `lang_ids` packed alongside `tokens`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
import grain
import numpy as np

from medmoe_jax.data import tokenizer as tokenizer_lib

_READ_OPTIONS = dict(num_threads=2, prefetch_buffer_size=64)


def mixture_weights(counts: Mapping[str, int], temperature: float = 1.0) -> dict[str, float]:
  """Sampling probabilities p_l = n_l^(1/T) / sum_k n_k^(1/T); they sum to 1."""
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  for lang, n in counts.items():
    if n <= 0:
      raise ValueError(f"language {lang!r} has {n} documents; every mixed language needs data")
  scaled = {lang: float(n) ** (1.0 / temperature) for lang, n in counts.items()}
  total = sum(scaled.values())
  return {lang: v / total for lang, v in scaled.items()}


def replay_weights(langs: Sequence[str], weights: Sequence[float], replayed: Sequence[str],
                   share: float) -> list[float]:
  """Rescale mixture weights (one per stream, `langs[i]` its language) so the streams of the
  `replayed` languages (MoE-LPR stage 2: the original languages) get `share` of the documents
  together and the others 1 - share; proportions within each group are kept."""
  replayed = set(replayed)
  w_rep = sum(w for lang, w in zip(langs, weights) if lang in replayed)
  w_new = sum(w for lang, w in zip(langs, weights) if lang not in replayed)
  if not 0.0 <= share < 1.0 or w_rep <= 0 or w_new <= 0:
    raise ValueError(f"replay share {share} needs 0 <= share < 1 and documents in both the "
                     f"replayed languages {sorted(replayed)} and the others")
  return [share * w / w_rep if lang in replayed else (1.0 - share) * w / w_new
          for lang, w in zip(langs, weights)]


def _record_langs(source) -> Sequence[str]:
  langs = getattr(source, "record_langs", None)
  if langs is None:  # a plain RandomAccessDataSource: read every record once
    langs = []
    for i in range(len(source)):
      lang = source[i]["lang"]
      langs.append(lang.decode() if isinstance(lang, bytes) else lang)
  return langs


def _indices_by_lang(source, languages: Sequence[str], split_desc: str) -> dict[str, np.ndarray]:
  if isinstance(source, Mapping):
    raise TypeError(
        f"source is a mapping with keys {sorted(source)}: pass one split, e.g. sources['train']"
    )
  if isinstance(languages, str):
    raise TypeError(f"languages must be a sequence of codes, e.g. [{languages!r}], not a string")
  if not languages:
    raise ValueError("languages is empty: name at least one language code")
  if len(set(languages)) != len(languages):
    raise ValueError(f"languages has duplicates: {list(languages)}")
  wanted = {lang: [] for lang in languages}
  for i, lang in enumerate(_record_langs(source)):
    if lang in wanted:
      wanted[lang].append(i)
  missing = [lang for lang, idx in wanted.items() if not idx]
  if missing:
    raise ValueError(
        f"no {split_desc} records for language(s) {missing} in {source!r}; drop them from "
        "`languages` or add data for them"
    )
  return {lang: np.asarray(idx, dtype=np.int64) for lang, idx in wanted.items()}


def _seed_for(seed: int, lang: str) -> int:
  # Derived from the language code, so a language's document order does not depend on which
  # other languages a config selects.
  return int(np.random.SeedSequence([seed, zlib.crc32(lang.encode())]).generate_state(1)[0])


def _check_args(seq_len, batch_size, shard_index, shard_count):
  if seq_len < 1 or batch_size < 1:
    raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
  if not (shard_count >= 1 and 0 <= shard_index < shard_count):
    raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")


class _Tokenize:
  """record -> {"tokens": BOS + ids + EOS, "lang_ids": same length, the language index}."""

  def __init__(self, source, tok, lang_index: Mapping[str, int]):
    self._source, self._tok, self._lang_index = source, tok, dict(lang_index)

  def __call__(self, record_index) -> dict[str, np.ndarray]:
    rec = self._source[int(record_index)]
    lang = rec["lang"].decode() if isinstance(rec["lang"], bytes) else rec["lang"]
    text = rec["text"].decode() if isinstance(rec["text"], bytes) else rec["text"]
    ids = np.asarray([self._tok.bos_id, *self._tok.encode(text), self._tok.eos_id], np.int32)
    return {"tokens": ids, "lang_ids": np.full(ids.shape, self._lang_index[lang], np.int32)}


class _SplitChunks(grain.experimental.FlatMapTransform):
  """A document longer than seq_len becomes consecutive chunks of at most seq_len tokens."""

  max_fan_out = 1 << 20  # unused by the iterator flat-map; chunks are unbounded in number

  def __init__(self, seq_len: int):
    self._n = seq_len

  def flat_map(self, element):
    length = len(element["tokens"])
    return [{k: v[s : s + self._n] for k, v in element.items()} for s in range(0, length, self._n)]


def _to_batch(batch_size: int):
  def finalize(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    seg = b["tokens_segment_ids"].astype(np.int32)
    out = {
        "tokens": b["tokens"].astype(np.int32),
        "segment_ids": seg,
        "positions": b["tokens_positions"].astype(np.int32),
        "lang_ids": np.where(seg > 0, b["lang_ids"], -1).astype(np.int32),
        "loss_mask": (seg > 0).astype(np.int32),
    }
    short = batch_size - seg.shape[0]
    if short:  # last batch of a finite stream: pad with empty rows, shapes stay static
      fill = {"lang_ids": -1}
      out = {
          k: np.concatenate([v, np.full((short, v.shape[1]), fill.get(k, 0), np.int32)])
          for k, v in out.items()
      }
    return out

  return finalize


def _tokenize_pack_batch(
    records: grain.MapDataset, source, tok, languages, seq_len, batch_size, seed, shuffle_bins
) -> grain.IterDataset:
  lang_index = {lang: i for i, lang in enumerate(languages)}
  ds = records.map(_Tokenize(source, tok, lang_index))
  ds = ds.to_iter_dataset(grain.ReadOptions(**_READ_OPTIONS))
  ds = grain.experimental.FlatMapIterDataset(ds, _SplitChunks(seq_len))
  ds = grain.experimental.FirstFitPackIterDataset(
      ds,
      length_struct={"tokens": seq_len, "lang_ids": seq_len},
      num_packing_bins=batch_size,
      seed=seed,
      shuffle_bins=shuffle_bins,
  )
  return ds.batch(batch_size, drop_remainder=False).map(_to_batch(batch_size))


def _load_tokenizer(tokenizer):
  return tokenizer_lib.load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer


def make_lm_dataset(
    source,
    *,
    languages: Sequence[str],
    tokenizer,
    seq_len: int,
    batch_size: int,
    seed: int,
    temperature: float = 1.0,
    shard_index: int = 0,
    shard_count: int = 1,
    repeat: bool = True,
    replay: tuple[Sequence[str], float] | None = None,
) -> grain.IterDataset:
  """Training batches from `source` (a TextSource or any source of {"text","lang"} records).

  `languages` selects and orders the languages (lang_ids index it); records of other languages
  are skipped. repeat=True: the infinite temperature-weighted mixture. repeat=False: one epoch,
  every selected record of this shard exactly once in a seeded shuffled order (natural
  proportions; `temperature` does not apply), the last batch padded with empty rows.
  `tokenizer` is a Tokenizer or a spec for `load_tokenizer`. replay=(languages, share): those
  languages together get `share` of the mixture (see `replay_weights`).
  """
  _check_args(seq_len, batch_size, shard_index, shard_count)
  tok = _load_tokenizer(tokenizer)
  by_lang = _indices_by_lang(source, languages, "training")
  seed = int(seed) % 2**32
  if repeat:
    weights = mixture_weights({lang: len(idx) for lang, idx in by_lang.items()}, temperature)
    if replay is not None and replay[1] > 0:
      weights = dict(zip(weights, replay_weights(list(weights), list(weights.values()), *replay)))
    streams = [
        grain.MapDataset.source(idx).shuffle(seed=_seed_for(seed, lang)).repeat()
        for lang, idx in by_lang.items()
    ]
    records = grain.MapDataset.mix(streams, [weights[lang] for lang in by_lang])
  else:
    all_idx = np.sort(np.concatenate(list(by_lang.values())))
    records = grain.MapDataset.source(all_idx).shuffle(seed=seed)
  records = records[shard_index::shard_count]
  return _tokenize_pack_batch(records, source, tok, languages, seq_len, batch_size, seed, True)


def make_eval_batches(
    source,
    *,
    languages: Sequence[str],
    tokenizer,
    seq_len: int,
    batch_size: int,
    language: str | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.IterDataset:
  """Evaluation batches (e.g. of the validation split): every record once, in source order.

  language=None: all records whose language is in `languages`; otherwise only that language's
  (it must be in `languages`, which fixes the lang_ids). Same batch format as training; the last
  batch is padded with empty rows (loss_mask 0) so every batch has the same shape.
  """
  _check_args(seq_len, batch_size, shard_index, shard_count)
  tok = _load_tokenizer(tokenizer)
  if language is not None and language not in languages:
    raise ValueError(f"language {language!r} is not in languages {list(languages)}")
  by_lang = _indices_by_lang(source, [language] if language else languages, "evaluation")
  all_idx = np.sort(np.concatenate(list(by_lang.values())))
  records = grain.MapDataset.source(all_idx)[shard_index::shard_count]
  return _tokenize_pack_batch(records, source, tok, languages, seq_len, batch_size, 0, False)

