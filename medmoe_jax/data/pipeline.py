"""grain pipeline: (language, source) mixture -> read + tokenize -> split -> pack -> batch.

Batch format (numpy, each [batch_size, seq_len]):
  tokens      int32  token ids (0 = pad)
  segment_ids int32  1, 2, 3, ... per packed document chunk within a row; 0 = padding
  positions   int32  0, 1, ... within each chunk
  lang_ids    int32  index of the record's language in `languages`; -1 on padding
  loss_mask   int32  1 where the token is a training target: every token of a text record,
                     the answer (assistant) tokens and EOS of a supervised record; 0 on prompt
                     tokens and padding. The loss must still drop targets that cross a segment
                     boundary (segment_ids[t+1] != segment_ids[t]), as training/step.py does.
  targets     int32  what position t-1 is trained to predict at token t: the token itself,
                     except the first token of a later user turn of a multi-turn chat record,
                     whose target is EOS (the official Apollo labels, data/chat.py); 0 = pad

Why this shape of pipeline: everything up to tokenisation is a grain MapDataset (random access),
so the mixture, the per-epoch reshuffles and the sharding are pure functions of an index; the
iterator state is then a handful of integers (JSON, saved with checkpoints), and a restored
iterator replays exactly the batches an uninterrupted one would have produced.

Mixture: records are grouped by (language, source); each group is its own stream, reshuffled
every epoch and repeated forever; grain's `MapDataset.mix` interleaves them with the weights of
`group_weights`: language l gets p_l ~ m_l^(1/T) with m_l = sum_s w_s n_ls (n_ls = training
documents of language l in source s, w_s the source's weight), and within the language, source
s gets w_s n_ls / m_l. T=1 and equal weights keep natural proportions; larger T flattens toward
uniform over languages, which up-samples minor ones; a source weight of 2 counts its documents
twice. Sharding takes every shard_count-th element of the global mixed stream, so the shards
partition one stream and each process reads and tokenizes only its part.

Records are read and tokenized READ_BATCH at a time (one ArrayRecord batch read, one batch
encode) by `num_threads` threads. Each document becomes BOS + tokens + EOS, cut into chunks of
at most seq_len tokens, and chunks are packed into rows, with `lang_ids` and `loss_mask` packed
alongside `tokens`:
  packing="first_fit"  grain's first-fit packing into batch_size bins: a document (up to seq_len)
                       is never split; rows are padded. Right for supervised records and short
                       documents; corpora of documents near seq_len/2 leave rows ~25% padding
                       (see BENCHMARKS.md).
  packing="concat"     concatenate, then split at seq_len: rows are full; a document may end in
                       the next row (a new segment there, positions from 0), as in most
                       pretraining pipelines.
A background thread keeps `prefetch` finished batches ready, so the training loop does not wait
for packing.
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
import zlib
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from medmoe_jax.data import tokenizer as tokenizer_lib

READ_BATCH = 32
NUM_THREADS = 2
PREFETCH = 2
PACKING = ("first_fit", "concat")


def mixture_weights(counts: Mapping[str, int], temperature: float = 1.0) -> dict[str, float]:
  """Sampling probabilities p_l = n_l^(1/T) / sum_k n_k^(1/T); they sum to 1."""
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  for lang, n in counts.items():
    if n <= 0:
      raise ValueError(f"language {lang!r} has {n} documents; every mixed language needs data")
  # Scaled by the largest count first so that n^(1/T) cannot overflow for small T.
  top = max(counts.values())
  scaled = {lang: (float(n) / top) ** (1.0 / temperature) for lang, n in counts.items()}
  total = sum(scaled.values())
  return {lang: v / total for lang, v in scaled.items()}


def group_weights(groups: Sequence[tuple[str, str, float, int]], temperature: float = 1.0
                  ) -> list[float]:
  """Probabilities of (lang, source, source weight, documents) groups; they sum to 1.

  p(l, s) = p_l * w_s n_ls / m_l, with m_l = sum_s w_s n_ls and p_l = mixture_weights(m)_l.
  """
  mass: dict[str, float] = {}
  for lang, _, w, n in groups:
    if w < 0 or n < 0:
      raise ValueError(f"group ({lang}, weight {w}, {n} documents): weights and sizes must be >= 0")
    mass[lang] = mass.get(lang, 0.0) + w * n
  p_lang = mixture_weights(mass, temperature)
  return [p_lang[lang] * w * n / mass[lang] for lang, _, w, n in groups]


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


def _groups(source, languages: Sequence[str], split_desc: str, weighted: bool):
  """[(lang, part, weight, indices)] of the selected languages, in `languages` order."""
  from medmoe_jax.data import sources  # pylint: disable=g-import-not-at-top

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
  if hasattr(source, "groups"):
    all_groups = source.groups()
  else:
    all_groups = [(lang, "", 1.0, idx) for lang, idx in sources._indices_by_lang(source).items()]  # pylint: disable=protected-access
  order = {lang: i for i, lang in enumerate(languages)}
  out = sorted((g for g in all_groups if g[0] in order and len(g[3]) and (g[2] > 0 or not weighted)),
               key=lambda g: (order[g[0]], g[1]))
  missing = [lang for lang in languages if not any(g[0] == lang for g in out)]
  if missing:
    raise ValueError(
        f"no {split_desc} records for language(s) {missing} in {source!r}; drop them from "
        "`languages` (config.languages.use) or add data for them"
    )
  return out


def cap_documents(groups, n: int):
  """Groups [(lang, part, weight, indices)] keeping each language's first n documents, over its
  groups in order (empty groups dropped)."""
  left: dict[str, int] = {}
  out = []
  for lang, part, w, idx in groups:
    keep = left.setdefault(lang, n)
    idx = np.sort(np.asarray(idx))[:keep]
    left[lang] = keep - len(idx)
    if len(idx):
      out.append((lang, part, w, idx))
  return out


def _seed_for(seed: int, lang: str, part: str = "") -> int:
  # Derived from the language code (and source name), so a group's document order does not
  # depend on which other languages or sources a config selects.
  key = lang if not part else f"{lang}/{part}"
  return int(np.random.SeedSequence([seed, zlib.crc32(key.encode())]).generate_state(1)[0])


class _Permuted:
  """i -> indices[permutation_e[i mod n]] with e = i // n: a fresh seeded shuffle every epoch.

  grain's own per-epoch shuffle (index_shuffle) costs milliseconds per element on small
  datasets; a cached numpy permutation costs one lookup. A pure function of i: resumable.
  """

  def __init__(self, indices: np.ndarray, seed: int):
    self._idx = np.asarray(indices, np.int64)
    self._seed = int(seed)
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._cache.get(epoch)
    if perm is None:
      rng = np.random.Generator(np.random.Philox(key=[self._seed, epoch]))
      perm = self._idx[rng.permutation(len(self._idx))]
      with self._lock:
        if len(self._cache) >= 2:
          self._cache.pop(min(self._cache))
        self._cache[epoch] = perm
    return perm

  def __call__(self, i: int) -> int:
    epoch, j = divmod(int(i), len(self._idx))
    return int(self._perm(epoch)[j])

  def __getstate__(self):
    return {"indices": self._idx, "seed": self._seed}

  def __setstate__(self, state):
    self.__init__(state["indices"], state["seed"])


def _check_args(seq_len, batch_size, shard_index, shard_count):
  if seq_len < 1 or batch_size < 1:
    raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
  if not (shard_count >= 1 and 0 <= shard_index < shard_count):
    raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")


def _str(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else v


def _pieces(text: str, spans) -> list[tuple[str, bool]]:
  """text and its prompt spans -> [(piece, is_prompt)] covering the text in order."""
  out, pos = [], 0
  for start, end in spans:
    if start > pos:
      out.append((text[pos:start], False))
    out.append((text[start:end], True))
    pos = end
  if pos < len(text):
    out.append((text[pos:], False))
  return out


def _segments(text: str, spans, eos_labels=()) -> list[tuple[str, str, bool]]:
  """Segmented records (chat.Rendered.segmented): [(segment, its masked prefix, whether its first
  token's target is EOS)], a segment from each span start to the next (text before the first
  span: a segment with no prefix). eos_labels: indices into spans."""
  starts = [s for s, _ in spans]
  out = [(text[:starts[0]], "", False)] if starts and starts[0] > 0 else []
  eos = set(eos_labels)
  for k, (start, end) in enumerate(spans):
    stop = starts[k + 1] if k + 1 < len(starts) else len(text)
    out.append((text[start:stop], text[start:end], k in eos))
  return out


class _ReadTokenize:
  """A batch of record ids -> [{"tokens", "lang_ids", "loss_mask"}] (BOS + ids + EOS each;
  loss_mask EOS_TARGET where the target is EOS instead of the token, see `targets_of`)."""

  def __init__(self, source, tok, lang_index: Mapping[str, int]):
    self._source, self._tok, self._lang_index = source, tok, dict(lang_index)

  def __call__(self, record_ids) -> list[dict[str, np.ndarray]]:
    ids = [int(i) for i in np.atleast_1d(record_ids)]
    if hasattr(self._source, "__getitems__"):
      recs = self._source.__getitems__(ids)
    else:
      recs = [self._source[i] for i in ids]
    # Every piece of every record in one encode call. Plain records: prompt pieces are encoded
    # separately so that the mask boundary falls between tokens. Segmented records (the
    # official Apollo format): each segment is encoded whole and its first
    # len(encode(prefix)) tokens are masked, as the official preprocessing does.
    texts, layout = [], []
    for rec in recs:
      text, spans = _str(rec["text"]), rec.get("prompt_spans") or ()
      if isinstance(spans, dict):  # {"segments": [...], "eos_labels": [...]}: chat.Rendered
        segs = _segments(text, spans["segments"], spans.get("eos_labels", ()))
        layout.append(("segments", [e for _, _, e in segs]))
        texts.extend(t for t, _, _ in segs)
        texts.extend(p for _, p, _ in segs)
        continue
      pieces = _pieces(text, spans) if spans else [(text, False)]
      layout.append(("pieces", [p for _, p in pieces]))
      texts.extend(t for t, _ in pieces)
    encoded = self._tok.encode_batch(texts)
    bos, eos = self._tok.bos_id, self._tok.eos_id
    out, k = [], 0
    for rec, (how, what) in zip(recs, layout):
      parts, masks = [np.asarray([bos], np.int32)], [np.zeros(1, np.int32)]
      if how == "segments":
        n = len(what)
        for j, eos_label in enumerate(what):
          piece = np.asarray(encoded[k + j], np.int32)
          n_masked = min(len(encoded[k + n + j]) if texts[k + n + j] else 0, len(piece))
          mask = (np.arange(len(piece)) >= n_masked).astype(np.int32)
          if eos_label and len(piece):
            mask[0] = EOS_TARGET
          parts.append(piece)
          masks.append(mask)
        k += 2 * n
        last_is_target = bool(len(masks[-1]) and masks[-1][-1])
      else:
        for is_prompt in what:
          piece = np.asarray(encoded[k], np.int32)
          k += 1
          parts.append(piece)
          masks.append(np.full(piece.shape, 0 if is_prompt else 1, np.int32))
        last_is_target = not what[-1]
      parts.append(np.asarray([eos], np.int32))
      masks.append(np.asarray([int(last_is_target)], np.int32))
      tokens = np.concatenate(parts)
      mask = np.concatenate(masks)
      if how == "pieces" and len(what) == 1 and not what[0]:
        mask[0] = 1  # a text record: every token, BOS included, counts as real
      lang = self._lang_index[_str(rec["lang"])]
      out.append({"tokens": tokens, "lang_ids": np.full(tokens.shape, lang, np.int32),
                  "loss_mask": mask})
    return out


class _SplitChunks(grain.experimental.FlatMapTransform):
  """A list of documents -> their consecutive chunks of at most seq_len tokens, in order."""

  max_fan_out = 1 << 20  # unused by the iterator flat-map; chunks are unbounded in number

  def __init__(self, seq_len: int):
    self._n = seq_len

  def flat_map(self, docs):
    return [{k: v[s : s + self._n] for k, v in d.items()}
            for d in docs for s in range(0, len(d["tokens"]), self._n)]


# A loss_mask value while packing: the token is a target, and its target is EOS, not the token
# (the official Apollo labels of a later user turn, data/chat.py). Carried in loss_mask rather
# than as a packed array of its own: packing a fourth array costs ~25% of the throughput.
EOS_TARGET = 2


def targets_of(tokens: np.ndarray, loss_mask: np.ndarray, eos_id: int):
  """(targets, loss_mask in {0, 1}) of packed tokens and a loss_mask holding EOS_TARGET."""
  eos_target = loss_mask == EOS_TARGET
  return (np.where(eos_target, eos_id, tokens).astype(np.int32),
          (loss_mask > 0).astype(np.int32))


def _to_batch(batch_size: int, eos_id: int):
  def finalize(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    seg = b["tokens_segment_ids"].astype(np.int32)
    real = seg > 0
    tokens = np.where(real, b["tokens"], 0).astype(np.int32)
    targets, loss_mask = targets_of(tokens, np.where(real, b["loss_mask"], 0), eos_id)
    out = {
        "tokens": tokens,
        "targets": targets,
        "segment_ids": seg,
        "positions": b["tokens_positions"].astype(np.int32),
        "lang_ids": np.where(real, b["lang_ids"], -1).astype(np.int32),
        "loss_mask": loss_mask,
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


# Prefetch iterators still alive at interpreter exit are closed by atexit, while the modules their
# __del__ needs are still there (grain's own __del__ otherwise prints an ignored AttributeError).
_LIVE = weakref.WeakSet()


@atexit.register
def _close_live_iterators():
  for it in list(_LIVE):
    it.close()


class _Prefetch(grain.experimental.ThreadPrefetchIterDataset):

  def __iter__(self):
    it = super().__iter__()
    _LIVE.add(it)
    return it


def _tokenize_pack_batch(records: grain.MapDataset, source, tok, languages, seq_len, batch_size,
                         seed, shuffle_bins, num_threads, prefetch, packing) -> grain.IterDataset:
  if packing not in PACKING:
    raise ValueError(f"packing must be one of {PACKING}, got {packing!r}")
  lang_index = {lang: i for i, lang in enumerate(languages)}
  ds = records.batch(READ_BATCH, drop_remainder=False).map(_ReadTokenize(source, tok, lang_index))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=4 * max(num_threads, 1)))
  ds = grain.experimental.FlatMapIterDataset(ds, _SplitChunks(seq_len))
  lengths = {"tokens": seq_len, "lang_ids": seq_len, "loss_mask": seq_len}
  if packing == "first_fit":
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct=lengths, num_packing_bins=batch_size, seed=seed,
        shuffle_bins=shuffle_bins)
  else:
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct=lengths)
  ds = ds.batch(batch_size, drop_remainder=False).map(_to_batch(batch_size, tok.eos_id))
  if prefetch:
    ds = _Prefetch(ds, prefetch_buffer_size=prefetch)
  return ds


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
    num_threads: int = NUM_THREADS,
    prefetch: int = PREFETCH,
    packing: str = "first_fit",
    replay: tuple[Sequence[str], float] | None = None,
    max_docs_per_language: int = 0,
) -> grain.IterDataset:
  """Training batches from `source`: a TextSource, a ConcatSource (several weighted sources),
  or any sequence of {"text", "lang"[, "prompt_spans"]} records (prompt_spans: [[start, end], ...],
  or {"segments": [[start, end], ...], "eos_labels": [...]} for the segmented chat format,
  data/chat.py).

  `languages` selects and orders the languages (lang_ids index it); records of other languages
  are skipped, and so are sources of weight 0. repeat=True: the infinite temperature-weighted
  mixture. repeat=False: one epoch, every selected record of this shard exactly once in a seeded
  shuffled order (natural proportions; `temperature` and weights do not apply), the last batch
  padded with empty rows. `tokenizer` is a Tokenizer or a spec for `load_tokenizer`.
  `packing`: "first_fit" or "concat" (see the module docstring).
  replay=(languages, share): those languages together get `share` of the mixture (MoE-LPR stage 2;
  see `replay_weights`). max_docs_per_language > 0: only each language's first N documents (in
  source order) are used, as LLaMA-Factory's `max_samples` keeps the first N of each dataset
  (MoE-LPR stage 2 draws 50K documents of every language that way).
  """
  _check_args(seq_len, batch_size, shard_index, shard_count)
  tok = _load_tokenizer(tokenizer)
  groups = _groups(source, languages, "training", weighted=True)
  if max_docs_per_language > 0:
    groups = cap_documents(groups, int(max_docs_per_language))
  seed = int(seed) % 2**32
  if repeat:
    weights = group_weights([(l, p, w, len(i)) for l, p, w, i in groups], temperature)
    if replay is not None and replay[1] > 0:
      weights = replay_weights([g[0] for g in groups], weights, *replay)
    streams = [grain.MapDataset.range(sys.maxsize).map(_Permuted(idx, _seed_for(seed, lang, part)))
               for lang, part, _, idx in groups]
    records = grain.MapDataset.mix(streams, weights) if len(streams) > 1 else streams[0]
  else:
    all_idx = np.sort(np.concatenate([g[3] for g in groups]))
    records = grain.MapDataset.range(len(all_idx)).map(_Permuted(all_idx, seed))
  records = records[shard_index::shard_count]
  return _tokenize_pack_batch(records, source, tok, languages, seq_len, batch_size, seed, True,
                              num_threads, prefetch, packing)


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
    num_threads: int = NUM_THREADS,
) -> grain.IterDataset:
  """Evaluation batches (e.g. of the validation split): every record once, in source order.

  language=None: all records whose language is in `languages`; otherwise only that language's
  (it must be in `languages`, which fixes the lang_ids). Same batch format as training; the last
  batch is padded with empty rows (loss_mask 0) so every batch has the same shape. Source
  weights do not apply: a weight-0 source is evaluated too.
  """
  _check_args(seq_len, batch_size, shard_index, shard_count)
  tok = _load_tokenizer(tokenizer)
  if language is not None and language not in languages:
    raise ValueError(f"language {language!r} is not in languages {list(languages)}")
  groups = _groups(source, [language] if language else languages, "evaluation", weighted=False)
  all_idx = np.sort(np.concatenate([g[3] for g in groups]))
  records = grain.MapDataset.source(all_idx)[shard_index::shard_count]
  return _tokenize_pack_batch(records, source, tok, languages, seq_len, batch_size, 0, False,
                              num_threads, 0, "first_fit")
