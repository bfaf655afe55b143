"""Local corpora (JSON, JSONL, Parquet, text) -> ArrayRecord (a tfds builder, no TensorFlow).

Why ArrayRecord through tfds: ArrayRecord gives O(1) random access, which grain needs for
deterministic, resumable, shardable shuffling; the tfds builder gives atomic writes (an
`incomplete.*` directory renamed on success), a `dataset_info.json` that documents the splits.
tensorflow-datasets serialises examples with its own copy of the tf.Example protos and writes
ArrayRecord with `array_record`, so `download_and_prepare(file_format="array_record")` runs with
TensorFlow absent. Reading goes straight to `array_record` and parses the protos itself (3x
faster than tfds' decoder, and no tfds import at training time).

One source (specs.SourceSpec: files, default language, detection candidates, weight, kind) is
built in one pass over its files (formats.py reads them):
  - every item is normalised to a record {text, lang, source, prompt_spans};
  - a record without `lang` gets the source's `lang`, else the detector's choice (langid.py),
    counted per language in the statistics;
  - bad input raises a formats.DataError naming file, line and field (on_error="raise"), or is
    skipped and counted per kind, with the first messages kept (on_error="skip");
  - the records go, in file order, to "validation" (record i of a file with i % every == 0,
    counting kept records) or "train", into a temporary JSONL from which tfds writes ArrayRecord.

`<data_dir>/<name>/<FORMAT_VERSION>/metadata.json` holds a fingerprint of the inputs (paths,
sizes, mtimes) and options, each split's record languages as runs (so the pipeline groups
records by language without reading them) and the statistics. A build whose fingerprint matches
is reused untouched; a stale one is replaced. A file lock serialises builders of one data_dir.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import io
import json
import os
import pathlib
import shutil
import tempfile
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from medmoe_jax import urls
from medmoe_jax.data import chat, formats, langid, specs
from medmoe_jax.data.specs import SAMPLE_TEXT_DIR, SourceSpec, sample_files  # noqa: F401

# 2.1.0: segmented records carry "eos_labels" (data/chat.py), so earlier builds are rebuilt.
FORMAT_VERSION = "2.1.0"
SPLITS = ("train", "validation")
VALIDATION_EVERY = 10
ON_ERROR = ("raise", "skip")
MAX_EXAMPLES = 20  # error messages kept per source in the statistics


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, str]]:
  """Yields `{"text", "lang", "source"}` of a strict JSONL text file (every record has `lang`).

  The reader of the embedded sample (and of tokenizer training on it). Raises ValueError naming
  file, line and field on malformed input, and on an empty file.
  """
  path = str(path)
  for loc, rec in formats.iter_records(path, "text"):
    if isinstance(rec, formats.DataError):
      raise rec
    if rec.lang is None:
      raise formats.DataError(path, loc, "missing_field", "missing field 'lang'", field="lang")
    yield {"text": rec.text, "lang": rec.lang, "source": rec.source or ""}


# ---------------------------------------------------------------- reading a build


@functools.cache
def _example_proto():
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  return tf_example_pb2.Example


def _expand(runs: Sequence[Sequence[Any]]) -> list[str]:
  out: list[str] = []
  for lang, count in runs:
    out.extend([lang] * int(count))
  return out


class TextSource:
  """Random-access records of one split: {"text", "lang", "source": str, "prompt_spans": list of
  [start, end], or {"segments": list, "eos_labels": list} for segmented records (data/chat.py)}.

  Implements grain's RandomAccessDataSource protocol (__len__, __getitem__, __getitems__) over
  ArrayRecord files, and knows each record's language (`lang_runs`) without reading it.
  """

  def __init__(self, paths: Sequence[str], lang_runs: Sequence[Sequence[Any]], name: str = ""):
    self.paths = [str(p) for p in paths]
    self.lang_runs = [(str(lang), int(n)) for lang, n in lang_runs]
    self.name = name
    self._n = sum(n for _, n in self.lang_runs)
    if self.paths:
      from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top

      self._ds = array_record_data_source.ArrayRecordDataSource(self.paths)
      if len(self._ds) != self._n:
        raise ValueError(f"{name}: language index has {self._n} records, data {len(self._ds)}; "
                         "delete the dataset directory to rebuild it")
    elif self._n:
      raise ValueError(f"{name}: {self._n} records in the index but no data files")

  def __len__(self) -> int:
    return self._n

  @staticmethod
  def _decode(raw: bytes) -> dict[str, Any]:
    f = _example_proto().FromString(raw).features.feature
    get = lambda k: f[k].bytes_list.value[0].decode("utf-8") if k in f else ""  # noqa: E731
    spans = get("prompt_spans")
    # A list of [start, end], or {"segments": [...]} for segmented records (chat.Rendered).
    return {"text": get("text"), "lang": get("lang"), "source": get("source"),
            "prompt_spans": json.loads(spans) if spans else []}

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self._decode(self._ds[int(i)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    if not len(indices):
      return []
    return [self._decode(r) for r in self._ds.__getitems__([int(i) for i in indices])]

  @functools.cached_property
  def record_langs(self) -> tuple[str, ...]:
    return tuple(_expand(self.lang_runs))

  def lang_counts(self) -> dict[str, int]:
    counts: dict[str, int] = collections.Counter()
    for lang, n in self.lang_runs:
      counts[lang] += n
    return dict(counts)

  def indices_by_lang(self) -> dict[str, np.ndarray]:
    """lang -> sorted record indices, from the runs (no record is read)."""
    parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    start = 0
    for lang, n in self.lang_runs:
      parts[lang].append(np.arange(start, start + n, dtype=np.int64))
      start += n
    return {lang: np.concatenate(p) for lang, p in parts.items()}

  def __getstate__(self):
    return {"paths": self.paths, "lang_runs": self.lang_runs, "name": self.name}

  def __setstate__(self, state):
    self.__init__(state["paths"], state["lang_runs"], state["name"])

  def __repr__(self) -> str:
    return f"TextSource({self.name}, {len(self)} records)"


class ConcatSource:
  """Several sources as one: global index = offset of the part + index within it.

  `parts` are (name, source, weight); the pipeline samples each (language, part) group as its
  own stream (see pipeline.group_weights). Records keep their own `source` field.
  """

  def __init__(self, parts: Sequence[tuple[str, Any, float]]):
    if not parts:
      raise ValueError("ConcatSource needs at least one part")
    self.parts = [(str(n), s, float(w)) for n, s, w in parts]
    self._offsets = np.cumsum([0] + [len(s) for _, s, _ in self.parts]).astype(np.int64)
    self.name = "+".join(n for n, _, _ in self.parts)

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def _locate(self, i: int) -> tuple[int, int]:
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for {self!r}")
    p = int(np.searchsorted(self._offsets, i, side="right")) - 1
    return p, i - int(self._offsets[p])

  def __getitem__(self, i: int):
    p, j = self._locate(int(i))
    return self.parts[p][1][j]

  def __getitems__(self, indices: Sequence[int]) -> list:
    idx = np.asarray(indices, dtype=np.int64)
    part = np.searchsorted(self._offsets, idx, side="right") - 1
    out: list = [None] * len(idx)
    for p in np.unique(part):
      where = np.flatnonzero(part == p)
      src = self.parts[int(p)][1]
      local = (idx[where] - self._offsets[p]).tolist()
      recs = src.__getitems__(local) if hasattr(src, "__getitems__") else [src[j] for j in local]
      for k, r in zip(where.tolist(), recs):
        out[k] = r
    return out

  def groups(self) -> list[tuple[str, str, float, np.ndarray]]:
    """[(lang, part name, part weight, global indices)] for every non-empty group."""
    out = []
    for p, (name, src, w) in enumerate(self.parts):
      for lang, idx in sorted(_indices_by_lang(src).items()):
        out.append((lang, name, w, idx + self._offsets[p]))
    return out

  def lang_counts(self) -> dict[str, int]:
    counts: dict[str, int] = collections.Counter()
    for lang, _, _, idx in self.groups():
      counts[lang] += len(idx)
    return dict(counts)

  def __repr__(self) -> str:
    return f"ConcatSource({', '.join(f'{n}:{len(s)}' for n, s, _ in self.parts)})"


def _indices_by_lang(source) -> dict[str, np.ndarray]:
  if hasattr(source, "indices_by_lang"):
    return source.indices_by_lang()
  langs = getattr(source, "record_langs", None)
  if langs is None:  # a plain sequence of records: read each one's language
    langs = [source[i]["lang"] for i in range(len(source))]
  by: dict[str, list[int]] = collections.defaultdict(list)
  for i, lang in enumerate(langs):
    by[lang.decode() if isinstance(lang, bytes) else lang].append(i)
  return {lang: np.asarray(v, np.int64) for lang, v in by.items()}


# ---------------------------------------------------------------- building


@dataclasses.dataclass
class BuiltSource:
  """A built source: its splits, statistics, and whether this call (re)built it."""
  spec: SourceSpec
  splits: dict[str, TextSource]
  stats: dict[str, Any]
  built: bool
  directory: pathlib.Path

  def __getitem__(self, split: str) -> TextSource:
    return self.splits[split]


@functools.cache
def _tfds():
  # tfds is imported lazily: it costs ~0.5 s and only building needs it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


@functools.cache
def _builder_base():
  tfds = _tfds()

  class NormalizedRecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes the normalised records of a scan (one temporary JSONL per split), in order."""

    VERSION = tfds.core.Version(FORMAT_VERSION)

    def __init__(self, *, scanned: Mapping[str, str], metadata: dict[str, Any], **kwargs):
      self._scanned = dict(scanned)
      self._metadata = metadata
      super().__init__(**kwargs)

    def _info(self):
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(
          builder=self,
          description="medmoe_jax corpus: normalised records of local files",
          features=tfds.features.FeaturesDict(
              {"text": text, "lang": text, "source": text, "prompt_spans": text}),
          disable_shuffling=True,  # keep file order: the language runs in metadata rely on it
          metadata=tfds.core.MetadataDict(self._metadata),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(s) for s in self._scanned}

    def _generate_examples(self, split):
      with open(self._scanned[split], encoding="utf-8") as f:
        for i, line in enumerate(f):
          text, lang, source, spans = json.loads(line)
          yield f"{i:012d}", {"text": text, "lang": lang, "source": source,
                              "prompt_spans": json.dumps(spans) if spans else ""}

  return NormalizedRecordsBuilder


def known_languages(custom: Sequence[str] = ()) -> specs.KnownLanguages:
  """Codes a record's `lang` may hold: languages.py's table, the detector's, declared ones."""
  return specs.KnownLanguages(custom)


def _file_key(path: str) -> list[Any]:
  return urls.file_key(path)  # path, size, version (mtime; a bucket object's generation)


def _fingerprint(spec: SourceSpec, files: Sequence[str], on_error: str, every: int,
                 known: specs.KnownLanguages, template: chat.ChatTemplate) -> str:
  # The known languages enter through the config's own codes; the fixed tables are versioned
  # with the code (FORMAT_VERSION).
  h = hashlib.sha256(json.dumps(
      [FORMAT_VERSION, every, on_error, spec.lang, spec.kind, known.custom, template.key]).encode())
  for f in files:
    h.update(json.dumps(_file_key(f)).encode())
  return h.hexdigest()


class _Scan:
  """One pass over a source's files: normalise, tag languages, split, count, write temp JSONL."""

  def __init__(self, spec: SourceSpec, files, on_error, every, candidates, known, tmp_dir,
               template: chat.ChatTemplate):
    self.spec, self.files, self.on_error, self.every = spec, files, on_error, every
    self.template = template
    self.candidates, self.known = candidates, known
    self.detector = None
    self.file_lang = spec.lang
    self.path_langs: dict[str, str] = {}
    self.runs: dict[str, list[list[Any]]] = {s: [] for s in SPLITS}
    self.docs = {s: collections.Counter() for s in SPLITS}
    self.chars: collections.Counter = collections.Counter()
    self.supervised = 0
    self.detected: collections.Counter = collections.Counter()
    self.low_confidence = 0
    self.skipped: collections.Counter = collections.Counter()
    self.examples: list[str] = []
    self.paths = {s: os.path.join(tmp_dir, f"{s}.jsonl") for s in SPLITS}

  def _bad(self, err: formats.DataError) -> None:
    if self.on_error == "raise":
      raise err
    self.skipped[err.kind] += 1
    if len(self.examples) < MAX_EXAMPLES:
      self.examples.append(str(err))

  def _lang_of(self, rec: formats.Record, path: str, loc) -> str:
    if rec.lang is not None:
      lang = specs.normalize_lang(rec.lang)
      if lang not in self.known:
        raise formats.DataError(path, loc, "unknown_language", f"field 'lang': unknown language "
                                f"{rec.lang!r}; use an ISO 639 code (e.g. 'en') or declare it in "
                                "config.languages.custom_families", field="lang")
      return lang
    if self.file_lang:
      return self.file_lang
    if self.detector is None:
      self.detector = self._make_detector(path, loc)
    lang, prob = self.detector.classify(rec.text)
    self.detected[lang] += 1
    self.low_confidence += prob < langid.LOW_CONFIDENCE
    return lang

  def _make_detector(self, path, loc) -> langid.Detector:
    # Not bad input but a config problem: raised whatever on_error says.
    where = f"{path}:{loc}: field 'lang': missing, and source {self.spec.name!r}"
    if not self.candidates:
      raise ValueError(f"{where} declares no language: set `lang` for the source (e.g. "
                       f"{{'paths': [...], 'lang': 'en'}}) or tag the records")
    cannot = sorted(set(self.candidates) - langid.detectable())
    if cannot:
      raise ValueError(
          f"{where} may hold languages the detector cannot detect: {cannot}. Set `lang` for "
          "the source if it is one language, tag its records with `lang`, or set `detect` to "
          f"the detectable languages it holds (detectable here: "
          f"{sorted(set(self.candidates) & langid.detectable())})")
    return langid.Detector(self.candidates)

  def run(self) -> None:
    outs = {s: open(p, "w", encoding="utf-8") for s, p in self.paths.items()}
    try:
      for path in self.files:
        kept = 0
        self.file_lang = self.spec.lang
        if self.spec.lang == specs.FROM_PATH:
          self.file_lang = specs.lang_from_path(path, self.candidates)
          self.path_langs[path] = self.file_lang
        for loc, rec in formats.iter_records(path, self.spec.kind, self.template):
          if isinstance(rec, formats.DataError):
            self._bad(rec)
            if rec.fatal:
              break
            continue
          try:
            lang = self._lang_of(rec, path, loc)
          except formats.DataError as e:
            self._bad(e)
            continue
          split = "validation" if self.every and kept % self.every == 0 else "train"
          kept += 1
          spans = [list(s) for s in rec.prompt_spans]
          outs[split].write(json.dumps(
              [rec.text, lang, rec.source if rec.source is not None else self.spec.name,
               {"segments": spans, "eos_labels": list(rec.eos_labels)} if rec.segmented else spans],
              ensure_ascii=False) + "\n")
          runs = self.runs[split]
          if runs and runs[-1][0] == lang:
            runs[-1][1] += 1
          else:
            runs.append([lang, 1])
          self.docs[split][lang] += 1
          self.chars[lang] += len(rec.text)
          self.supervised += bool(rec.prompt_spans)
    finally:
      for f in outs.values():
        f.close()

  def stats(self) -> dict[str, Any]:
    return {
        "name": self.spec.name, "files": len(self.files), "kind": self.spec.kind,
        "documents": {s: dict(sorted(self.docs[s].items())) for s in SPLITS},
        "chars": dict(sorted(self.chars.items())),
        "supervised": self.supervised,
        "detected": dict(sorted(self.detected.items())),
        "detect_candidates": (list(self.candidates) if self.detected or self.path_langs
                              else []),
        "low_confidence": int(self.low_confidence),
        "languages_from_paths": self.path_langs,
        "skipped": dict(sorted(self.skipped.items())),
        "skipped_examples": self.examples,
    }


@contextlib.contextmanager
def _lock(path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)  # never written: a reused build touches nothing
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock


def _split_paths(version_dir: pathlib.Path, name: str, split: str) -> list[str]:
  return sorted(str(p) for p in version_dir.glob(f"{name}-{split}.array_record-*"))


def build_source(
    spec: SourceSpec,
    data_dir: str | os.PathLike,
    *,
    on_error: str = "raise",
    validation_every: int = VALIDATION_EVERY,
    detect: Sequence[str] | None = None,
    known: specs.KnownLanguages | None = None,
    log=None,
    template: chat.ChatTemplate = formats.DEFAULT_TEMPLATE,
) -> BuiltSource:
  """Builds `spec` once under `data_dir/<spec.name>/`; reuses a build whose inputs are unchanged.

  detect: default detection candidates for records without `lang` (spec.detect wins), normally
  the config's languages; None/empty: such records are an error unless spec.lang is set.
  known: the language codes a record may carry (default: known_languages()).
  template: how supervised records are rendered (data/chat.py; part of the fingerprint).
  """
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
  if validation_every < 0:
    raise ValueError(f"validation_every must be >= 0, got {validation_every}")
  if not specs.NAME_RE.match(spec.name):
    raise ValueError(f"dataset name {spec.name!r} must match {specs.NAME_RE.pattern} "
                     "(a tfds builder name)")
  known = known_languages() if known is None else known
  files = spec.files()
  if not files:
    raise ValueError(f"source {spec.name!r}: no input files")
  for f in files:
    formats.file_format(f)  # unknown extensions fail before anything is read
  candidates = tuple(sorted(set(spec.detect if spec.detect is not None else (detect or ()))))
  base = _fingerprint(spec, files, on_error, validation_every, known, template)

  if urls.is_url(data_dir):
    return _build_in_bucket(spec, str(data_dir), base, candidates, dict(
        on_error=on_error, validation_every=validation_every, detect=detect, known=known,
        log=log, template=template))
  root = pathlib.Path(data_dir) / spec.name
  version_dir = root / FORMAT_VERSION
  meta_path = version_dir / "metadata.json"
  with _lock(pathlib.Path(data_dir) / f".{spec.name}.lock"):
    meta = None
    if version_dir.exists():
      old = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
      meta = old if _reusable(old, version_dir, spec, base, candidates) else None
    built = meta is None
    if built:
      if log:
        log(f"building source {spec.name!r} from {len(files)} file(s) into {version_dir}")
      meta = _build(spec, files, root, version_dir, on_error, validation_every, candidates,
                    known, base, template)
  return _built_source(spec, version_dir, meta, built)


def _built_source(spec: SourceSpec, version_dir: pathlib.Path, meta: dict, built: bool):
  splits = {s: TextSource(_split_paths(version_dir, spec.name, s), meta["lang_runs"][s],
                          name=f"{spec.name}/{s}") for s in SPLITS}
  return BuiltSource(spec, splits, meta["stats"], built, version_dir)


def _reusable(old: dict, where, spec: SourceSpec, fingerprint: str, candidates) -> bool:
  """Whether a build's metadata says it was built from these inputs with these options."""
  if "fingerprint" not in old:
    raise ValueError(
        f"{where} exists but was not written by medmoe_jax (no fingerprint in "
        "metadata.json); choose another data_dir or source name, or remove it")
  # Detection candidates matter only to a build that detected something.
  return old["fingerprint"] == fingerprint and (
      not old["stats"]["detected"] and spec.lang != specs.FROM_PATH
      or old["stats"]["detect_candidates"] == list(candidates))


def _build_in_bucket(spec: SourceSpec, data_dir: str, fingerprint: str, candidates,
                     options: dict) -> BuiltSource:
  """A data_dir at a URL (gs://...): the build lives there, built once, and every worker reads
  a local copy (ArrayRecord's reader reads local files only; urls.cache_dir). A build in the
  bucket from the same inputs is downloaded (once per machine: a copy with the same metadata is
  reused); otherwise the source is built locally and uploaded, metadata.json last, so a copy
  without it is never taken for a build."""
  remote = urls.join(data_dir, spec.name, FORMAT_VERSION)
  remote_meta = urls.join(remote, "metadata.json")
  local_root = urls.cache_dir(data_dir)
  local = pathlib.Path(local_root) / spec.name / FORMAT_VERSION
  if urls.exists(remote_meta):
    old = json.loads(urls.read_text(remote_meta))
    if _reusable(old, remote, spec, fingerprint, candidates):
      local_meta = local / "metadata.json"
      if not (local_meta.is_file() and json.loads(local_meta.read_text()) == old):
        if local.exists():
          shutil.rmtree(local)
        urls.download_dir(remote, str(local))
      return _built_source(spec, local, old, built=False)
  result = build_source(spec, local_root, **options)
  if urls.exists(remote):
    urls.remove_tree(remote)  # an older build of other inputs: none of its shards may stay
  if options.get("log"):
    options["log"](f"uploading source {spec.name!r} to {remote}")
  urls.upload_dir(str(result.directory), remote, last="metadata.json")
  return result


def _build(spec, files, root, version_dir, on_error, every, candidates, known, fingerprint,
           template):
  if version_dir.exists():
    shutil.rmtree(version_dir)  # our own build, of inputs or options that have changed since
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix="scan-", dir=root) as tmp:
    scan = _Scan(spec, files, on_error, every, candidates, known, tmp, template)
    scan.run()
    stats = scan.stats()
    if not sum(sum(d.values()) for d in stats["documents"].values()):
      raise ValueError(f"source {spec.name!r}: no usable record in {len(files)} file(s); "
                       f"skipped {stats['skipped']}: {stats['skipped_examples'][:3]}")
    meta = {"fingerprint": fingerprint, "files": files, "lang_runs": scan.runs, "stats": stats}
    scanned = {s: scan.paths[s] for s in SPLITS if scan.runs[s]}
    tfds = _tfds()
    cls = types.new_class(
        "".join(p.title() for p in spec.name.split("_")) or "Text",
        (_builder_base(),),
        {"skip_registration": True},
        lambda ns: ns.update(name=spec.name),
    )
    builder = cls(scanned=scanned, metadata=meta, data_dir=str(root.parent),
                  file_format="array_record")
    from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

    progress = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
      # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
      # for every build. Nothing is downloaded (the examples come from the scanned local
      # files), so those lines would only mislead; our own log line says what is built.
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(download_dir=str(root / "downloads"))
    finally:
      tfds.display_progress_bar(progress)
  return meta


def iter_texts(spec: SourceSpec, on_error: str = "raise",
               template: chat.ChatTemplate = formats.DEFAULT_TEMPLATE) -> Iterator[str]:
  """The text of every record of a source, in file order (no language handling): tokenizer input."""
  for path in spec.files():
    for _, rec in formats.iter_records(path, spec.kind, template):
      if isinstance(rec, formats.DataError):
        if on_error == "raise":
          raise rec
        if rec.fatal:
          break
        continue
      yield rec.text


def build_text_source(files: Sequence[str], data_dir: str | os.PathLike, name: str, *,
                      on_error: str = "raise", detect: Sequence[str] | None = None
                      ) -> dict[str, TextSource]:
  """One source of `files` (no detection unless `detect` is given): {"train", "validation"}."""
  if not files:
    raise ValueError(f"build_text_source({name!r}): no input files")
  spec = SourceSpec(name=name, paths=tuple(str(f) for f in files))
  return build_source(spec, data_dir, on_error=on_error, detect=detect).splits
