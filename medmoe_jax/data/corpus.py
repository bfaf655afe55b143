"""A config's corpus: build its sources, count them, and make the training batches.

    build_sources(data)                       every source of the run, built once
    load_splits(data)                         {"train", "validation"}: ConcatSource of all sources
    train_dataset(data, tokenizer, ...)       the grain dataset the trainer iterates
    prepare(data, tokenizer)                  build + statistics (printed and saved)

`data` is the run's DataSpec (data/specs.py), resolved from the config by medmoe_jax.config.

Statistics: per source and language, documents (train/validation), tokens (with the config's
tokenizer: content tokens without BOS/EOS, and targets: the tokens the loss sees, i.e. without
prompts), records tagged by the language detector, low-confidence detections, skipped records
per kind with their first messages, and the sampling probability the pipeline gives each
language. Token counts are cached per tokenizer next to each build, so a second `prepare` reads
everything and writes nothing.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import numpy as np

# pipeline (grain) is imported where batches are made: statistics alone do not need it.
from medmoe_jax import urls
from medmoe_jax.data import sources
from medmoe_jax.data.specs import DataSpec
from medmoe_jax.fileio import write_atomic


def build_sources(data: DataSpec, *, log=print) -> list[sources.BuiltSource]:
  """Builds every missing or stale source of the run; reuses the others untouched."""
  known, template = data.known_languages(), data.chat()
  return [sources.build_source(spec, data.data_dir, on_error=data.on_error,
                               validation_every=int(data.validation_every),
                               detect=list(data.languages), known=known, log=log,
                               template=template)
          for spec in data.sources]


def concat(built: list[sources.BuiltSource], split: str) -> sources.ConcatSource:
  return sources.ConcatSource([(b.spec.name, b.splits[split], b.spec.weight) for b in built])


def load_splits(data: DataSpec, *, log=print) -> dict[str, sources.ConcatSource]:
  built = build_sources(data, log=log)
  return {s: concat(built, s) for s in sources.SPLITS}


def train_dataset(data: DataSpec, tokenizer, process_index: int = 0, process_count: int = 1,
                  *, log=print):
  """The training batches of this process: its shard of the global stream, batch_size /
  process_count rows per batch (the trainer assembles them into global arrays)."""
  if data.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={data.batch_size} is not divisible by the "
                     f"{process_count} processes; make it a multiple of {process_count}")
  from medmoe_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  train = concat(build_sources(data, log=log), "train")
  return pipeline.make_lm_dataset(
      train, languages=list(data.languages), tokenizer=tokenizer, seq_len=data.seq_len,
      batch_size=data.batch_size // process_count, seed=data.seed,
      temperature=data.temperature, shard_index=process_index, shard_count=process_count,
      num_threads=int(data.num_threads), prefetch=int(data.prefetch),
      packing=data.packing, replay=data.replay,
      max_docs_per_language=data.max_docs_per_language)


# ---------------------------------------------------------------- statistics


def count_tokens(built: sources.BuiltSource, tokenizer, batch: int = 256) -> dict[str, Any]:
  """{split: {lang: {"tokens": n, "targets": n}}} of one built source, cached per tokenizer."""
  from medmoe_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  path = built.directory / f"tokens-{tokenizer.fingerprint[:16]}.json"
  if path.is_file():
    return json.loads(path.read_text())
  out: dict[str, Any] = {}
  for split, src in built.splits.items():
    langs = sorted(src.lang_counts())
    reader = pipeline._ReadTokenize(src, tokenizer, {l: i for i, l in enumerate(langs)})  # pylint: disable=protected-access
    counts = {lang: {"tokens": 0, "targets": 0} for lang in langs}
    for start in range(0, len(src), batch):
      for doc in reader(np.arange(start, min(start + batch, len(src)))):
        lang = langs[int(doc["lang_ids"][0])]
        counts[lang]["tokens"] += len(doc["tokens"]) - 2  # without BOS and EOS
        counts[lang]["targets"] += int(np.count_nonzero(doc["loss_mask"][1:]))  # BOS never is
    out[split] = counts
  write_atomic(path, json.dumps(out, indent=1, sort_keys=True))
  return out


def corpus_stats(data: DataSpec, built: list[sources.BuiltSource], tokenizer=None) -> dict[str, Any]:
  """Per source and language statistics, plus the training mixture (JSON-serialisable)."""
  from medmoe_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  use = list(data.languages)
  out: dict[str, Any] = {"config": data.name, "languages": use, "temperature": data.temperature,
                         "on_error": data.on_error, "sources": {}, "by_language": {}}
  if tokenizer is not None:
    out["tokenizer"] = getattr(tokenizer, "name", str(tokenizer))
  by_lang: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for b in built:
    s = dict(b.stats)
    s["directory"] = str(b.directory)
    s["weight"] = b.spec.weight  # not part of the build: a reweighted source is not rebuilt
    if tokenizer is not None:
      s["tokens"] = count_tokens(b, tokenizer)
    out["sources"][b.spec.name] = s
    for split in sources.SPLITS:
      for lang, n in s["documents"][split].items():
        by_lang[lang][f"{split}_documents"] += n
        if tokenizer is not None:
          by_lang[lang][f"{split}_tokens"] += s["tokens"][split][lang]["tokens"]
          by_lang[lang][f"{split}_targets"] += s["tokens"][split][lang]["targets"]
    for lang, n in s["detected"].items():
      by_lang[lang]["detected"] += n
  # The mixture the training pipeline will use (documents of the train split, source weights).
  groups = [(lang, b.spec.name, b.spec.weight, n) for b in built
            for lang, n in b.stats["documents"]["train"].items() if lang in use and b.spec.weight > 0]
  probs: dict[str, float] = collections.Counter()
  if groups:
    for (lang, _, _, _), p in zip(groups, pipeline.group_weights(groups, data.temperature)):
      probs[lang] += p
  for lang, counter in by_lang.items():
    out["by_language"][lang] = {**counter, "in_use": lang in use,
                                "mixture_probability": probs.get(lang, 0.0)}
  out["missing_languages"] = [lang for lang in use if not by_lang[lang]["train_documents"]]
  out["unused_languages"] = sorted(lang for lang in by_lang if lang not in use)
  return out


def _n(x) -> str:
  return f"{int(x):,}"


def format_stats(stats: dict[str, Any]) -> str:
  """A plain-text report of corpus_stats()."""
  has_tokens = "tokenizer" in stats
  lines = [f"corpus of config {stats['config']!r}: {len(stats['sources'])} source(s), "
           f"temperature {stats['temperature']}, on_error={stats['on_error']!r}"
           + (f", tokens by {stats['tokenizer']}" if has_tokens else "")]
  head = f"  {'source':<18}{'files':>6}{'train docs':>12}{'val docs':>10}"
  head += f"{'train tokens':>14}" if has_tokens else ""
  head += f"{'supervised':>11}{'detected':>10}{'skipped':>9}  weight"
  lines.append(head)
  for name, s in stats["sources"].items():
    row = (f"  {name:<18}{s['files']:>6}{_n(sum(s['documents']['train'].values())):>12}"
           f"{_n(sum(s['documents']['validation'].values())):>10}")
    if has_tokens:
      row += f"{_n(sum(v['tokens'] for v in s['tokens']['train'].values())):>14}"
    row += (f"{_n(s['supervised']):>11}{_n(sum(s['detected'].values())):>10}"
            f"{_n(sum(s['skipped'].values())):>9}  {s['weight']:g}")
    lines.append(row)
    if s["skipped"]:
      lines.append(f"    skipped {s['skipped']}; first: {s['skipped_examples'][0]}")
    if s["detected"]:
      lines.append(f"    detector chose {s['detected']} ({s['low_confidence']} below "
                   f"probability 0.5) among {s['detect_candidates']}")
  head = f"  {'lang':<6}{'train docs':>12}{'val docs':>10}"
  head += f"{'train tokens':>14}{'targets':>14}" if has_tokens else ""
  head += f"{'detected':>10}{'mixture p':>11}"
  lines.append(head)
  rows = sorted(stats["by_language"].items(), key=lambda kv: -kv[1].get("train_documents", 0))
  for lang, v in rows:
    row = (f"  {lang:<6}{_n(v.get('train_documents', 0)):>12}"
           f"{_n(v.get('validation_documents', 0)):>10}")
    if has_tokens:
      row += f"{_n(v.get('train_tokens', 0)):>14}{_n(v.get('train_targets', 0)):>14}"
    p = f"{100 * v['mixture_probability']:.2f}%" if v["in_use"] else "unused"
    row += f"{_n(v.get('detected', 0)):>10}{p:>11}"
    lines.append(row)
  if stats["missing_languages"]:
    lines.append(f"  no training data for {stats['missing_languages']} (config.languages.use): "
                 "training will refuse to start")
  if stats["unused_languages"]:
    lines.append(f"  data in languages not in config.languages.use (not trained on): "
                 f"{stats['unused_languages']}")
  return "\n".join(lines)


def stats_path(data: DataSpec) -> str:
  return urls.join(data.data_dir, f"stats_{data.name}.json")


def prepare(data: DataSpec, tokenizer=None, *, log=print) -> dict[str, Any]:
  """Builds every source (no-op for built ones), counts, prints and saves the statistics."""
  built = build_sources(data, log=log)
  stats = corpus_stats(data, built, tokenizer)
  path = stats_path(data)
  text = json.dumps(stats, indent=1, sort_keys=True, ensure_ascii=False)
  old = urls.read_text(path) if urls.isfile(path) else None
  if old is None or json.loads(old) != json.loads(text):
    (urls.write_text if urls.is_url(path) else write_atomic)(path, text)
  stats["built_now"] = [b.spec.name for b in built if b.built]
  if log:
    log(format_stats(stats))
    reused = [b.spec.name for b in built if not b.built]
    if reused:
      log(f"already built (inputs unchanged): {', '.join(reused)}")
    log(f"statistics: {path}")
  return stats
