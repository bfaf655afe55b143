"""Source specs: what `config.data.sources` says, parsed and checked before anything is read.

`config.data.sources` is one of
  "sample"                              the embedded 20-language sample (one source, "sample")
  "a/*.jsonl,b.parquet"                 comma-separated paths/globs, one source each
  ["sample", "x/*.json", {...}, ...]    a list of paths/globs and dicts, one source each

A dict names a source and its options:
  paths   str or list of str   files or globs (.jsonl, .json, .parquet, .txt; optionally .gz)
  name    str                  dataset name, [a-z][a-z0-9_]*; default: from the first path
  lang    str                  language of records that carry no `lang` field; "" = detect;
                               "from_path": the language code in each file's name (or, failing
                               that, its directories' names), e.g. Medical_Exam_en.json, ceb/x.txt
  detect  list of str          languages the detector may choose for this source's untagged
                               records; default: config.languages.use. Every one must be a
                               language the detector knows (langid.DETECTABLE): a language it
                               cannot detect (e.g. ceb) must be declared with `lang`.
  weight  float >= 0           sampling weight of the source (see pipeline.group_weights);
                               0 keeps the source out of training (validation only)
  kind    "auto"|"text"|"sft"  record kind: "text" needs `text`; "sft" needs `question`/`answer`
                               or a list of chat turns; "auto" decides per record

Why parse here and not in the builder: a typo in a config must fail at `config.validate`, before
a multi-gigabyte corpus is read, and with the key it came from (config.data.sources[2].weight).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import re
from collections.abc import Sequence

from medmoe_jax import urls
from medmoe_jax.data import chat

KINDS = ("auto", "text", "sft")
SAMPLE = "sample"
FROM_PATH = "from_path"
SAMPLE_TEXT_DIR = pathlib.Path(__file__).resolve().parent / "sample" / "text"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_KEYS = ("paths", "name", "lang", "detect", "weight", "kind")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  name: str
  paths: tuple[str, ...]
  lang: str = ""
  detect: tuple[str, ...] | None = None  # None: the config's languages
  weight: float = 1.0
  kind: str = "auto"

  def files(self) -> list[str]:
    """The input files, globs expanded (sorted within each pattern, patterns in order)."""
    out: list[str] = []
    for pattern in self.paths:
      if pattern == SAMPLE:
        out.extend(sample_files())
        continue
      remote = urls.is_url(pattern)  # gs://... and other fsspec URLs
      path = pattern if remote else os.path.expanduser(pattern)
      if glob.has_magic(path):
        found = urls.glob(path) if remote else sorted(glob.glob(path))
      else:
        found = [path]
      if not found:
        raise FileNotFoundError(f"source {self.name!r}: {pattern!r} matches no file")
      for f in found:
        if not urls.isfile(f):
          raise FileNotFoundError(f"source {self.name!r}: input file not found: {f}")
      out.extend(found)
    return out


def sample_files() -> list[str]:
  """The embedded sample corpus: one JSONL file per language, sorted by name."""
  return sorted(str(p) for p in SAMPLE_TEXT_DIR.glob("*.jsonl"))


def normalize_lang(code: str) -> str:
  """'EN', 'en-US', 'pt_BR', 'zh-Hans' -> 'en', 'en', 'pt', 'zh': lower case, region dropped."""
  return re.split(r"[-_]", code.strip().lower(), maxsplit=1)[0]


def _name_from(pattern: str) -> str:
  if pattern == SAMPLE:
    return SAMPLE
  p = pathlib.PurePath(os.path.expanduser(pattern))
  parts = [x for x in (p.name, p.parent.name) if x and not glob.has_magic(x)]
  stem = parts[0] if parts else "source"
  for suffix in (".gz", ".jsonl", ".json", ".parquet", ".txt"):
    stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
  name = re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "source"
  return name if name[0].isalpha() else f"s_{name}"


def _as_list(value) -> list:
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  if isinstance(value, (list, tuple)):
    return list(value)
  if hasattr(value, "to_dict"):  # a ConfigDict: one source
    return [value.to_dict()]
  if isinstance(value, dict):
    return [value]
  raise ValueError(f"must be 'sample', comma-separated paths, or a list of paths/dicts; got "
                   f"{type(value).__name__}")


def parse_sources(value) -> list[SourceSpec]:
  """config.data.sources -> specs. Raises ValueError naming the entry (`[i].key`) and the fix."""
  items = _as_list(value)
  if not items:
    raise ValueError("is empty: name at least one source ('sample' or a path)")
  specs: list[SourceSpec] = []
  for i, item in enumerate(items):
    where = f"[{i}]"
    if isinstance(item, str):
      item = {"paths": [item]}
    if hasattr(item, "to_dict"):
      item = item.to_dict()
    if not isinstance(item, dict):
      raise ValueError(f"{where}: expected a path or a dict, got {type(item).__name__}")
    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
      raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(_KEYS)}")
    paths = item.get("paths")
    paths = [paths] if isinstance(paths, str) else paths
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
      raise ValueError(f"{where}.paths: give a path/glob or a list of them, got {paths!r}")
    name = item.get("name") or _name_from(paths[0])
    if not isinstance(name, str) or not NAME_RE.match(name):
      raise ValueError(f"{where}.name: {name!r} must match {NAME_RE.pattern}")
    lang = item.get("lang", "") or ""
    if not isinstance(lang, str):
      raise ValueError(f"{where}.lang: must be a language code string, got {lang!r}")
    detect = item.get("detect")
    if detect is not None:
      detect = [detect] if isinstance(detect, str) else detect
      if not isinstance(detect, (list, tuple)) or not all(isinstance(x, str) for x in detect):
        raise ValueError(f"{where}.detect: must be a list of language codes, got {detect!r}")
      detect = tuple(normalize_lang(x) for x in detect)
    weight = item.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
      raise ValueError(f"{where}.weight: must be a number >= 0, got {weight!r}")
    kind = item.get("kind", "auto")
    if kind not in KINDS:
      raise ValueError(f"{where}.kind: {kind!r}; use one of {', '.join(KINDS)}")
    specs.append(SourceSpec(name=name, paths=tuple(p.strip() for p in paths),
                            lang=lang if lang in ("", FROM_PATH) else normalize_lang(lang),
                            detect=detect,
                            weight=float(weight), kind=kind))
  # Names derived from paths may collide (two "train.jsonl"): number them; explicit ones must not.
  seen: dict[str, int] = {}
  out = []
  for i, s in enumerate(specs):
    if s.name in seen:
      if isinstance(items[i], dict) and items[i].get("name"):
        raise ValueError(f"[{i}].name: {s.name!r} is already the name of source [{seen[s.name]}]")
      k = 2
      while f"{s.name}_{k}" in seen:
        k += 1
      s = dataclasses.replace(s, name=f"{s.name}_{k}")
    seen[s.name] = i
    out.append(s)
  if sum(s.weight for s in out) <= 0:
    raise ValueError("every source has weight 0: give at least one a positive weight")
  return out


class KnownLanguages:
  """The codes a record's or a spec's `lang` may hold: languages.py's table, the config's own
  (languages.use, custom_families) and the language detector's labels. Membership is checked
  against the cheap sets first: the detector's model (2 s to load) only for an unusual code."""

  def __init__(self, custom: Sequence[str] = ()):
    from medmoe_jax import languages  # pylint: disable=g-import-not-at-top

    self.custom = tuple(sorted(set(custom)))
    self._cheap = frozenset(languages.LANGUAGE_NAMES) | frozenset(self.custom)

  def __contains__(self, code) -> bool:
    if code in self._cheap:
      return True
    from medmoe_jax.data import langid  # pylint: disable=g-import-not-at-top

    return code in langid.detectable()


def lang_from_path(path: str, candidates: Sequence[str]) -> str:
  """The one code of `candidates` among the words of a file's name, else of its directories'.

  "Medical_Exam_en_sampled.json" -> "en", "lpr/ceb/part-0.txt" -> "ceb". Only candidate codes
  (the config's languages) count, so ordinary words ("data", "no") are not read as languages.
  Raises ValueError when no level names exactly one.
  """
  cands = set(candidates)
  p = pathlib.PurePath(path)
  name = p.name
  for suffix in (".gz", ".jsonl", ".json", ".parquet", ".txt"):
    name = name[: -len(suffix)] if name.endswith(suffix) else name
  for level in [name, *(d.name for d in list(p.parents)[:3])]:
    found = sorted({w for w in re.split(r"[^a-z]+", level.lower()) if w in cands})
    if len(found) == 1:
      return found[0]
    if len(found) > 1:
      raise ValueError(f"{path}: lang='from_path' is ambiguous: {level!r} names {found}; give "
                       "the source an explicit `lang`")
  raise ValueError(f"{path}: lang='from_path' found none of the languages {sorted(cands)} in the "
                   "file or directory names; rename, or give the source an explicit `lang`")


def check_sources(specs: Sequence[SourceSpec], known_languages) -> None:
  """Checks the languages specs name (default `lang`, `detect`) against the known codes."""
  for i, s in enumerate(specs):
    if s.lang and s.lang != FROM_PATH and s.lang not in known_languages:
      raise ValueError(f"[{i}].lang: unknown language {s.lang!r}; use an ISO 639 code or declare "
                       "it in config.languages.custom_families")
    for code in s.detect or ():
      if code not in known_languages:
        raise ValueError(f"[{i}].detect: unknown language {code!r}")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Everything the data package needs of a run, resolved once (medmoe_jax.config.resolve):
  the corpus (parsed, checked sources), where it is built, how it is tokenized, sampled and
  packed. The data package reads only this, never the config."""
  name: str                       # the run's name (names the statistics file)
  sources: tuple[SourceSpec, ...]
  languages: tuple[str, ...]      # config.languages.use; the order defines lang_id
  custom_languages: tuple[str, ...] = ()  # codes declared in config.languages.custom_families
  data_dir: str = ""              # where built sources live (absolute)
  tokenizer: str = "sample"
  seq_len: int = 256
  batch_size: int = 8             # global rows per step
  seed: int = 0
  temperature: float = 1.0
  on_error: str = "raise"
  validation_every: int = 10
  packing: str = "first_fit"
  num_threads: int = 2
  prefetch: int = 2
  # MoE-LPR stage 2: (replayed languages, their share of the mixture), or None.
  replay: tuple[tuple[str, ...], float] | None = None
  chat_template: str = "apollo"   # how supervised records become text (data/chat.py)
  max_docs_per_language: int = 0  # > 0: each language's first N training documents only

  def chat(self):
    """The chat template (read from the tokenizer directory for "hf")."""
    return chat.template(self.chat_template, self.tokenizer)

  def known_languages(self) -> KnownLanguages:
    return KnownLanguages([*self.custom_languages, *self.languages])

  def files(self) -> list[str]:
    """The input files of every source."""
    return [f for s in self.sources for f in s.files()]
