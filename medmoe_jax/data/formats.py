"""Input files -> located items -> normalised records, with errors that name file, line, field.

Formats (by extension, optionally `.gz`):
  .jsonl    one JSON value per line (blank lines ignored)
  .json     a JSON array of records; a .json file that does not start with `[` is read as JSONL
            (what `datasets.Dataset.to_json` writes)
  .parquet  one record per row (columns as fields); "line" in messages is the 1-based row
  .txt      one text document per non-empty line (plain text per language, as MoE-LPR uses)

Records (a JSON value, a Parquet row or a text line):
  "a string" or {"text": str}                        text: every token is a training target
  {"question": str, "answer": str}                   supervised: the question is a prompt
  {"messages": [{"role", "content"}, ...]}           supervised chat (also "conversations" with
  ["user turn", "assistant turn", ...]               ShareGPT {"from", "value"} turns, "turns");
                                                     only assistant turns are targets
plus optional "lang" (ISO 639 code; "en-US" -> "en") and "source" (str).

A supervised record becomes one text through the chat template (data/chat.py; default: the
official Apollo-MoE `User:{question}\nAssistant:{answer}`), and `prompt_spans`: the [start, end)
character ranges that are prompt. The pipeline gives prompt tokens loss_mask 0.

Errors are `DataError`s (a ValueError) with a `kind`, the statistics key under which
on_error="skip" counts them. A file-level error (bytes that are not UTF-8 in a JSON array,
malformed JSON array, unreadable Parquet, no record at all) ends that file; a line-level error
(malformed JSON line, missing or wrong field) ends only that record.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Iterator
from typing import Any

from medmoe_jax.errors import InputError  # a ValueError the CLIs report in one line

from medmoe_jax import urls
from medmoe_jax.data import chat

TEXT_ROLES = ("assistant", "gpt", "model", "bot", "chatbot")
PROMPT_ROLES = ("user", "human", "system", "prompter", "tool")
CHAT_FIELDS = ("messages", "conversations", "turns")
EXTENSIONS = (".jsonl", ".json", ".parquet", ".txt")


class DataError(InputError):
  """Bad input at path:line (field); `kind` is the statistics key; `fatal` ends the file."""

  def __init__(self, path: str, line: int | str, kind: str, message: str, *,
               field: str = "", fatal: bool = False):
    self.path, self.line, self.kind, self.field, self.fatal = path, line, kind, field, fatal
    super().__init__(f"{path}:{line}: {message}")


@dataclasses.dataclass(frozen=True)
class Record:
  text: str
  prompt_spans: tuple[tuple[int, int], ...] = ()
  lang: str | None = None     # as given by the record (None: absent)
  source: str | None = None
  segmented: bool = False     # chat.Rendered.segmented: how the pipeline tokenizes the spans
  eos_labels: tuple[int, ...] = ()  # chat.Rendered.eos_labels: segments whose first target is EOS


class FieldError(InputError):
  def __init__(self, field: str, kind: str, message: str):
    self.field, self.kind = field, kind
    super().__init__(message)


def file_format(path: str) -> str:
  name = path[:-3] if path.endswith(".gz") else path
  for ext in EXTENSIONS:
    if name.endswith(ext):
      return ext[1:]
  raise ValueError(f"{path}: unknown file type; use one of {', '.join(EXTENSIONS)} (optionally .gz)")


def _open(path: str):
  if urls.is_url(path):  # gs://... through fsspec
    return urls.open_binary(path)
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _decode_line(raw: bytes, path: str, lineno: int) -> str | DataError:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    return DataError(path, lineno, "not_utf8",
                     f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); convert the "
                     "file to UTF-8")


def _iter_lines(path: str, f) -> Iterator[tuple[int, str | DataError]]:
  for lineno, raw in enumerate(f, start=1):
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
      raw = raw[3:]  # UTF-8 byte order mark
    line = _decode_line(raw, path, lineno)
    if isinstance(line, str):
      if not line.strip():
        continue
      line = line.rstrip("\r\n")
    yield lineno, line


def _iter_jsonl(path: str, f) -> Iterator[tuple[int, Any]]:
  for lineno, line in _iter_lines(path, f):
    if isinstance(line, DataError):
      yield lineno, line
      continue
    try:
      yield lineno, json.loads(line)
    except json.JSONDecodeError as e:
      yield lineno, DataError(path, lineno, "malformed_json",
                              f"malformed JSON ({e.msg} at column {e.colno})")


_WS = " \t\n\r"


def _iter_json_array(path: str, data: bytes) -> Iterator[tuple[int, Any]]:
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    yield line, DataError(path, line, "not_utf8", f"not UTF-8 (byte 0x{data[e.start]:02x} at "
                          f"column {col}); convert the file to UTF-8; rest of file not read",
                          fatal=True)
    return
  decoder = json.JSONDecoder()
  pos, n, line, counted = 0, len(text), 1, 0

  def skip_ws(p):
    while p < n and text[p] in _WS:
      p += 1
    return p

  def line_at(p):
    nonlocal line, counted
    line += text.count("\n", counted, p)
    counted = p
    return line

  def fail(p, msg):
    ln = line_at(p)
    col = p - (text.rfind("\n", 0, p) + 1) + 1
    return ln, DataError(path, ln, "malformed_json",
                         f"malformed JSON ({msg} at column {col}); rest of file not read",
                         fatal=True)

  pos = skip_ws(pos)
  pos += 1  # the '[' (checked by the caller)
  pos = skip_ws(pos)
  if pos < n and text[pos] == "]":
    return
  while True:
    try:
      obj, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      yield fail(e.pos, e.msg)
      return
    yield line_at(pos), obj
    pos = skip_ws(end)
    if pos < n and text[pos] == ",":
      pos = skip_ws(pos + 1)
      continue
    if pos < n and text[pos] == "]":
      if skip_ws(pos + 1) != n:
        yield fail(skip_ws(pos + 1), "extra data after the array")
      return
    yield fail(pos, "expected ',' or ']'")
    return


def _iter_parquet(path: str) -> Iterator[tuple[int, Any]]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  try:
    pf = pq.ParquetFile(urls.open_binary(path) if urls.is_url(path) else path)
  except Exception as e:  # pyarrow raises several types for a corrupt file
    yield "row 1", DataError(path, "row 1", "malformed_parquet", f"not a readable Parquet file "
                             f"({type(e).__name__}: {e})", fatal=True)
    return
  row = 0
  for batch in pf.iter_batches(batch_size=1024):
    for obj in batch.to_pylist():
      row += 1
      yield f"row {row}", {k: v for k, v in obj.items() if v is not None}


def iter_items(path: str) -> Iterator[tuple[int | str, Any]]:
  """(location, raw value or DataError) for every item of one file, in file order.

  Yields one DataError(kind="empty_file") for a file without any item.
  """
  empty = True
  for loc, item in _items(path, file_format(path)):
    empty = False
    yield loc, item
  if empty:
    yield 1, DataError(path, 1, "empty_file", "empty file: no record", fatal=True)


def _items(path: str, fmt: str) -> Iterator[tuple[int | str, Any]]:
  if fmt == "parquet":
    yield from _iter_parquet(path)
    return
  with _open(path) as f:
    if fmt == "txt":
      yield from _iter_lines(path, f)
    elif fmt == "jsonl":
      yield from _iter_jsonl(path, f)
    else:  # a JSON array needs the whole text; JSONL saved as .json streams by lines
      data = f.read()
      head = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
      if head.lstrip()[:1] == b"[":
        yield from _iter_json_array(path, data)
      else:
        yield from _iter_jsonl(path, iter(data.splitlines(True)))


def _lower_keys(obj: dict, where: str = "") -> dict:
  """Keys in any capitalisation ("Question", "TEXT", "Role") as the lower-case keys read here;
  two keys that differ only in case are an error naming them."""
  out: dict = {}
  for k, v in obj.items():
    key = k.lower() if isinstance(k, str) else k
    if key in out:
      raise FieldError(f"{where}{key}", "bad_field", f"fields {key!r} and {k!r} differ only in "
                       "capitalisation; keep one")
    out[key] = v
  return out


def _str_field(obj: dict, field: str, *, required: bool) -> str | None:
  if field not in obj:
    if required:
      raise FieldError(field, "missing_field", f"missing field '{field}'")
    return None
  v = obj[field]
  if not isinstance(v, str):
    raise FieldError(field, "bad_field", f"field '{field}' must be a string, got "
                     f"{type(v).__name__}")
  if required and not v.strip():
    raise FieldError(field, "bad_field", f"field '{field}' must be a non-empty string")
  return v


def _chat(turns, field: str) -> list[tuple[str, bool]]:
  if not isinstance(turns, (list, tuple)) or not turns:
    raise FieldError(field, "bad_field", f"field '{field}' must be a non-empty list of turns")
  pieces = []
  for i, t in enumerate(turns):
    where = f"{field}[{i}]"
    if isinstance(t, str):
      pieces.append((t, i % 2 == 0))  # plain strings alternate: user, assistant, user, ...
      continue
    if not isinstance(t, dict):
      raise FieldError(where, "bad_field", f"field '{where}' must be a string or an object with "
                       "'role' and 'content'")
    t = _lower_keys(t, where + ".")
    role = t.get("role", t.get("from"))
    content = t.get("content", t.get("value"))
    if not isinstance(role, str) or not isinstance(content, str):
      raise FieldError(where, "missing_field", f"field '{where}' needs string 'role' and "
                       "'content' (or ShareGPT 'from' and 'value')")
    role = role.lower()
    if role not in TEXT_ROLES + PROMPT_ROLES:
      raise FieldError(f"{where}.role", "bad_field", f"field '{where}.role': unknown role "
                       f"{role!r}; use one of {', '.join(PROMPT_ROLES + TEXT_ROLES)}")
    pieces.append((content, role in PROMPT_ROLES))
  if not any(not p and c.strip() for c, p in pieces):
    raise FieldError(field, "bad_field", f"field '{field}' has no non-empty assistant turn: "
                     "nothing to train on")
  return pieces


def _supervised(turns, template: chat.ChatTemplate, lang=None, source=None) -> Record:
  r = template.render(turns)
  return Record(r.text, r.prompt_spans, lang, source, r.segmented, r.eos_labels)


_MISSING = {
    "text": "missing field 'text'",
    "sft": "missing field 'question'/'answer' (or chat turns in 'messages')",
    "auto": "missing field 'text' (or 'question'/'answer', or chat turns in 'messages')",
}


DEFAULT_TEMPLATE = chat.ChatTemplate()


def to_record(item: Any, kind: str = "auto",
              template: chat.ChatTemplate = DEFAULT_TEMPLATE) -> Record:
  """A raw item -> Record. Raises FieldError(field, kind, message)."""
  if isinstance(item, str):
    if kind == "sft":
      raise FieldError("question", "missing_field", _MISSING["sft"])
    if not item.strip():
      raise FieldError("text", "bad_field", "empty text")
    return Record(item)
  if isinstance(item, (list, tuple)):
    if kind == "text":
      raise FieldError("text", "missing_field", _MISSING["text"] + ", got a list of turns")
    return _supervised(_chat(item, "turns"), template)
  if not isinstance(item, dict):
    raise FieldError("", "not_a_record", f"expected a JSON object, got {type(item).__name__}")
  item = _lower_keys(item)
  lang = _str_field(item, "lang", required=False)
  if lang is not None and not lang.strip():
    raise FieldError("lang", "bad_field", "field 'lang' must be a non-empty string (or absent)")
  source = _str_field(item, "source", required=False)
  if kind != "sft" and "text" in item:
    return Record(_str_field(item, "text", required=True), (), lang, source)
  if kind != "text":
    if "question" in item or "answer" in item:
      q = _str_field(item, "question", required=True)
      a = _str_field(item, "answer", required=True)
      return _supervised([(q, True), (a, False)], template, lang, source)
    for field in CHAT_FIELDS:
      if field in item:
        return _supervised(_chat(item[field], field), template, lang, source)
  raise FieldError("text" if kind != "sft" else "question", "missing_field", _MISSING[kind])


def iter_records(path: str, kind: str = "auto", template: chat.ChatTemplate = DEFAULT_TEMPLATE
                 ) -> Iterator[tuple[int | str, Record | DataError]]:
  """(location, Record or DataError) for every item of a file."""
  for loc, item in iter_items(path):
    if isinstance(item, DataError):
      yield loc, item
      continue
    try:
      yield loc, to_record(item, kind, template)
    except FieldError as e:
      yield loc, DataError(path, loc, e.kind, str(e), field=e.field)
