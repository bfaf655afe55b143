"""Local JSONL text corpora -> ArrayRecord (written by a tfds builder, no TensorFlow) -> random access.

Why ArrayRecord through tfds: ArrayRecord gives O(1) random access, which grain needs for
deterministic, resumable, shardable shuffling; the tfds builder gives atomic writes (an
`incomplete.*` directory renamed on success), a `dataset_info.json` that documents the splits, and
`as_data_source()` readers. tensorflow-datasets 4.9.10 serialises examples with its own copy of
the tf.Example protos (`tensorflow_datasets.proto.tf_example_pb2`) and writes ArrayRecord with
`array_record`, so `download_and_prepare(file_format="array_record")` runs with TensorFlow absent.

Input: JSONL, one `{"text": str, "lang": str, "source": str}` object per line (`source` optional,
blank lines ignored). Bad input fails before anything is written, with a ValueError naming the
file, the line and the field.

Splits: in each file, the records with index i % 10 == 0 (counting records, not blank lines) go
to "validation", the rest to "train": deterministic, and every non-empty file has at least one
validation record (per-language perplexity needs each language).

No-op rebuilds: the dataset's `metadata.json` holds a fingerprint of the input files (absolute
path, size, mtime) and the format version; `build_text_source` reuses a build whose fingerprint
matches and rebuilds (removing the stale version directory) otherwise. The same file holds each
split's record languages as runs, so the pipeline can group records by language without reading
them all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
import types
from collections.abc import Iterator, Sequence
from typing import Any

FORMAT_VERSION = "1.0.0"
SPLITS = ("train", "validation")
VALIDATION_EVERY = 10

SAMPLE_TEXT_DIR = pathlib.Path(__file__).resolve().parent / "sample" / "text"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def sample_files() -> list[str]:
  """The embedded sample corpus: one JSONL file per language, sorted by name."""
  return sorted(str(p) for p in SAMPLE_TEXT_DIR.glob("*.jsonl"))


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, str]]:
  """Yields validated records `{"text", "lang", "source"}` of one JSONL file, in order.

  Raises ValueError naming file, line and field on malformed input, and on an empty file.
  """
  path = str(path)
  n = 0
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
      for field in ("text", "lang"):
        if field not in obj:
          raise ValueError(f"{where}: missing field '{field}'")
        if not isinstance(obj[field], str) or not obj[field].strip():
          raise ValueError(f"{where}: field '{field}' must be a non-empty string")
      source = obj.get("source", "")
      if not isinstance(source, str):
        raise ValueError(f"{where}: field 'source' must be a string")
      n += 1
      yield {"text": obj["text"], "lang": obj["lang"], "source": source}
  if n == 0:
    raise ValueError(f"{path}:1: empty file: no JSON record with fields 'text' and 'lang'")


def _split_of(index_in_file: int) -> str:
  return "validation" if index_in_file % VALIDATION_EVERY == 0 else "train"


def _fingerprint(files: Sequence[str]) -> str:
  h = hashlib.sha256(f"{FORMAT_VERSION}/{VALIDATION_EVERY}".encode())
  for f in files:
    st = os.stat(f)
    h.update(json.dumps([os.path.abspath(f), st.st_size, st.st_mtime_ns]).encode())
  return h.hexdigest()


def _scan(files: Sequence[str]) -> dict[str, list[list[Any]]]:
  """Validates every file; returns per split the record languages as runs [[lang, count], ...]."""
  runs: dict[str, list[list[Any]]] = {s: [] for s in SPLITS}
  for f in files:
    for i, rec in enumerate(read_jsonl(f)):
      r = runs[_split_of(i)]
      if r and r[-1][0] == rec["lang"]:
        r[-1][1] += 1
      else:
        r.append([rec["lang"], 1])
  return runs


@functools.cache
def _tfds():
  # tfds is imported lazily: it costs ~0.5 s and only building/reading needs it.
  import tensorflow_datasets as tfds

  return tfds


@functools.cache
def _builder_base():
  tfds = _tfds()

  class JsonlTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes the records of local JSONL files, in file order, as train/validation splits."""

    VERSION = tfds.core.Version(FORMAT_VERSION)

    def __init__(self, *, files: Sequence[str], metadata: dict[str, Any], **kwargs):
      self._files = list(files)
      self._metadata = metadata
      super().__init__(**kwargs)

    def _info(self):
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(
          builder=self,
          description="medmoe_jax text corpus from local JSONL files",
          features=tfds.features.FeaturesDict({"text": text, "lang": text, "source": text}),
          disable_shuffling=True,  # keep file order: the language runs in metadata rely on it
          metadata=tfds.core.MetadataDict(self._metadata),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(s) for s in SPLITS}

    def _generate_examples(self, split):
      for fi, f in enumerate(self._files):
        for i, rec in enumerate(read_jsonl(f)):
          if _split_of(i) == split:
            yield f"{fi:06d}:{i:09d}", rec

  return JsonlTextBuilder


class TextSource:
  """Random-access records `{"text", "lang", "source"}` (str) of one split.

  Implements grain's RandomAccessDataSource protocol (__len__, __getitem__, __getitems__) over a
  tfds ArrayRecord data source, and knows each record's language without reading it.
  """

  def __init__(self, data_source, record_langs: Sequence[str], name: str = ""):
    if len(record_langs) != len(data_source):
      raise ValueError(
          f"{name}: language index has {len(record_langs)} records, data {len(data_source)}; "
          "delete the dataset directory to rebuild it"
      )
    self._ds = data_source
    self.record_langs = tuple(record_langs)
    self.name = name

  def __len__(self) -> int:
    return len(self._ds)

  @staticmethod
  def _decode(rec) -> dict[str, str]:
    return {k: v.decode("utf-8") if isinstance(v, bytes) else str(v) for k, v in rec.items()}

  def __getitem__(self, i: int) -> dict[str, str]:
    return self._decode(self._ds[int(i)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, str]]:
    return [self._decode(r) for r in self._ds.__getitems__([int(i) for i in indices])]

  def lang_counts(self) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lang in self.record_langs:
      counts[lang] = counts.get(lang, 0) + 1
    return counts

  def __repr__(self) -> str:
    return f"TextSource({self.name}, {len(self)} records)"


def _expand(runs: Sequence[Sequence[Any]]) -> list[str]:
  out: list[str] = []
  for lang, count in runs:
    out.extend([lang] * int(count))
  return out


def build_text_source(
    files: Sequence[str], data_dir: str | os.PathLike, name: str
) -> dict[str, TextSource]:
  """Builds (once) the ArrayRecord dataset `name` from `files` under `data_dir`; returns its splits.

  Returns {"train": TextSource, "validation": TextSource}. A second call with unchanged files
  reads the existing build without rewriting anything.
  """
  if not _NAME_RE.match(name):
    raise ValueError(f"dataset name {name!r} must match {_NAME_RE.pattern} (a tfds builder name)")
  files = [str(f) for f in files]
  if not files:
    raise ValueError(f"build_text_source({name!r}): no input files")
  for f in files:
    if not os.path.isfile(f):
      raise FileNotFoundError(f"input file not found: {f}")
  version_dir = pathlib.Path(data_dir) / name / FORMAT_VERSION
  meta_path = version_dir / "metadata.json"
  fingerprint = _fingerprint(files)

  meta = None
  if version_dir.exists():
    old = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if "fingerprint" not in old:
      raise ValueError(
          f"{version_dir} exists but was not written by build_text_source (no fingerprint in "
          "metadata.json); choose another data_dir or name, or remove it"
      )
    meta = old if old["fingerprint"] == fingerprint else None
  if meta is None:
    meta = {"fingerprint": fingerprint, "files": files, "lang_runs": _scan(files)}
    if version_dir.exists():
      shutil.rmtree(version_dir)  # our own build, of inputs that have changed since
    tfds = _tfds()
    cls = types.new_class(
        "".join(p.title() for p in name.split("_")) or "Text",
        (_builder_base(),),
        {"skip_registration": True},
        lambda ns: ns.update(name=name),
    )
    builder = cls(files=files, metadata=meta, data_dir=str(data_dir), file_format="array_record")
    from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

    progress = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)  # a few-second build needs no progress bars
    try:
      builder.download_and_prepare(download_dir=str(pathlib.Path(data_dir) / name / "downloads"))
    finally:
      tfds.display_progress_bar(progress)

  data_sources = _tfds().builder_from_directory(str(version_dir)).as_data_source()
  return {
      s: TextSource(data_sources[s], _expand(meta["lang_runs"][s]), name=f"{name}/{s}")
      for s in SPLITS
  }
