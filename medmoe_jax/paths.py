"""Paths a user gives, made absolute once, relative to where the command runs.

Orbax refuses relative checkpoint paths, and a run's config.json is read later from other
directories (evaluation, the next stage of a method), so every path in a config is resolved
when the config is: `resolve_config_paths` for a training config, `resolve_eval_paths` for an
evaluation config. URLs (gs://...) and the built-in names ("sample", "") stay as they are.
"""
from __future__ import annotations

import os

SAMPLE = "sample"


def absolute(path: str, cwd: str | None = None) -> str:
  """`~` expanded and made absolute against `cwd` (default: the working directory); URLs and ""
  unchanged."""
  path = str(path)
  if not path or "://" in path:
    return path
  path = os.path.expanduser(path)
  return os.path.normpath(os.path.join(cwd or os.getcwd(), path))


def _named_or_absolute(value: str, cwd: str | None) -> str:
  return value if value in ("", SAMPLE) else absolute(value, cwd)


def _csv_absolute(value: str, cwd: str | None) -> str:
  """"a.jsonl, b/*.json" -> absolute paths, comma-separated; "sample" entries kept."""
  return ",".join(_named_or_absolute(v.strip(), cwd) for v in value.split(",") if v.strip())


def _source_absolute(item, cwd: str | None):
  """One entry of config.data.sources with its paths absolute; anything malformed is left as
  it is for validation to name."""
  if isinstance(item, str):
    return _named_or_absolute(item.strip(), cwd)
  if hasattr(item, "to_dict"):
    item = item.to_dict()
  if isinstance(item, dict) and "paths" in item:
    paths = item["paths"]
    if isinstance(paths, str):
      paths = _named_or_absolute(paths.strip(), cwd)
    elif isinstance(paths, (list, tuple)) and all(isinstance(p, str) for p in paths):
      paths = [_named_or_absolute(p.strip(), cwd) for p in paths]
    return {**item, "paths": paths}
  return item


def sources_absolute(value, cwd: str | None = None):
  """config.data.sources with every path absolute (same shape: a string stays a string)."""
  if isinstance(value, str):
    return _csv_absolute(value, cwd)
  if isinstance(value, (list, tuple)):
    return [_source_absolute(v, cwd) for v in value]
  if isinstance(value, dict) or hasattr(value, "to_dict"):
    return _source_absolute(value, cwd)
  return value


def resolve_config_paths(c, cwd: str | None = None) -> None:
  """A training config's paths (upcycle source, data dir, data sources, tokenizer) made
  absolute in place."""
  if "upcycle" in c and c.upcycle.get("from", ""):
    c.upcycle["from"] = absolute(c.upcycle["from"], cwd)  # one FieldReference with `from_`
  if "data" in c:
    d = c.data
    if d.get("data_dir", ""):
      d.data_dir = absolute(d.data_dir, cwd)
    if "tokenizer" in d:
      d.tokenizer = _named_or_absolute(str(d.tokenizer), cwd)
    if "sources" in d:
      d.sources = sources_absolute(d.sources, cwd)


def resolve_eval_paths(c, cwd: str | None = None) -> None:
  """An evaluation config's paths (checkpoints, MCQ files, perplexity data dir) made absolute
  in place."""
  for key in ("checkpoint", "baseline_checkpoint"):
    if c.get(key, ""):
      c[key] = absolute(c[key], cwd)
  if "mcq" in c and c.mcq.get("files", ""):
    c.mcq.files = _csv_absolute(str(c.mcq.files), cwd)
  if "perplexity" in c and c.perplexity.get("data_dir", ""):
    c.perplexity.data_dir = absolute(c.perplexity.data_dir, cwd)
