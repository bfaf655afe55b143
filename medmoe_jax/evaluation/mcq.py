"""Medical multiple choice: the files users have, the paper's generative protocol, and
lm-evaluation-harness's log-likelihood convention.

Formats (reference/evaluation.md), detected per record:
  XMedBench / ApolloMoEBench: JSON array or JSONL of {"question", "options" | "option": "(A) ..\\n
    (B) ..", "answer" | "anwer": "(B)", "source", ["context"], ["class"], ["lang"]}.
  MMedBench: JSONL of {"question", "options": {"A": .., ...}, "answer_idx": "B" (or "A,C"),
    ["rationale"]}; the language comes from "lang" or the file name (English.jsonl ...).
Bad input (unknown format, an answer that is not among the options, an empty file) raises
MCQFormatError naming the file and the item, or, with on_bad="skip", skips and counts it.

Generative mode: protocol "apollo" / "apollo50" is the official Apollo-MoE code's
(evaluation/apollo.py); protocol "translated" is this module's own: seeded k-shot exemplars from the item's source (never the item),
the language's template, exemplars dropped from the end while the prompt is over the character
limit, items still over skipped; greedy decoding; `extract_letter` reads the answer.
Log-likelihood mode (lm-eval): one request per option, context + " " + option text (or letter);
acc = argmax of the summed log-probabilities, acc_norm = argmax of that over the option's length
in characters.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from medmoe_jax.errors import InputError  # a ValueError the CLIs report in one line
from medmoe_jax.evaluation import apollo, templates
from medmoe_jax.evaluation.accuracy import DEFAULT_EXCLUDED_FROM_AVERAGE, summarize  # noqa: F401 (re-exported)
from medmoe_jax.languages import LANGUAGE_NAMES, MAJOR_LANGUAGES

LETTERS = "ABCDEF"

# Known sources -> language (reference/evaluation.md). Minor-language sources end in -<lang>.
SOURCE_LANG = {
    "medqa-usmle": "en", "medmcqa": "en", "mmlu-medical": "en", "pubmedqa": "en",
    "medqa-mcmle": "zh", "cmmlu-medical": "zh", "cmb-single": "zh", "cmexam": "zh",
    "headqa": "es", "frenchmedmcqa": "fr", "mmlu-medical-fr": "fr", "mmlu-medical-ar": "ar",
    "mmlu-medical-hi": "hi", "igakuqa": "ja", "kormedmcqa": "ko", "medexpqa": "it",
    "mmlu-medical-it": "it", "rumeddanet": "ru",
}
MMEDBENCH_FILE_LANG = {"english": "en", "chinese": "zh", "japanese": "ja", "french": "fr",
                       "russian": "ru", "spanish": "es"}

_OPTION_LINE = re.compile(r"^\s*[（(]\s*([A-Fa-f])\s*[）)]\s?(.*)$")
_ANSWER = re.compile(r"^\s*[（(]?\s*([A-Fa-f])\s*[）)]?\s*\.?\s*$")


class MCQFormatError(InputError):
  """A multiple-choice file or item is not usable; the message names the file and the item."""


@dataclasses.dataclass(frozen=True)
class MCQItem:
  question: str
  options: tuple[tuple[str, str], ...]  # ((letter, text), ...) in order A, B, ...
  answer: str                           # gold letter
  source: str
  lang: str
  cls: str                              # "major" | "minor"
  context: str = ""
  where: str = ""                       # "file:item N" for messages and predictions
  raw_answer: str = ""                  # as written in the data, e.g. "(B)"
  # As written in the data, for the official prompts ("" / None: not given).
  raw_question: str = ""
  raw_options: str = ""
  raw_context: str | None = None        # None: the record has no "context" field

  @property
  def letters(self) -> str:
    return "".join(l for l, _ in self.options)

  @property
  def options_text(self) -> str:
    return "\n".join(f"({l}) {t}" for l, t in self.options)


@dataclasses.dataclass
class LoadReport:
  """What loading skipped, by reason, and each problem's location (on_bad="skip")."""
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  problems: list[str] = dataclasses.field(default_factory=list)

  def add(self, reason: str, message: str):
    self.skipped[reason] += 1
    self.problems.append(message)


def source_language(source: str) -> str | None:
  s = source.strip().lower()
  if s in SOURCE_LANG:
    return SOURCE_LANG[s]
  if s.startswith("mmlu_") and s.rsplit("_", 1)[-1] in ("de", "pt"):  # MMLU_anatomy_de, ...
    return s.rsplit("_", 1)[-1]
  if "-" in s:  # minor-language sources end in -<lang>
    tail = s.rsplit("-", 1)[-1]
    if tail in LANGUAGE_NAMES:
      return tail
  return None


def parse_options(text: str) -> tuple[tuple[str, str], ...]:
  """"(A) x\\n(B) y" -> (("A", "x"), ("B", "y")). Lines that do not open an option continue the
  previous one. Full-width brackets accepted. Raises ValueError on no/duplicate/out-of-order
  letters."""
  opts: list[list[str]] = []
  for line in text.split("\n"):
    m = _OPTION_LINE.match(line)
    if m:
      opts.append([m.group(1).upper(), m.group(2).strip()])
    elif opts:
      opts[-1][1] += "\n" + line
    elif line.strip():
      raise ValueError(f"options text does not start with '(A)': {line[:40]!r}")
  if len(opts) < 2:
    raise ValueError(f"found {len(opts)} options in {text[:60]!r}; need at least 2 as '(A) ...' lines")
  letters = "".join(l for l, _ in opts)
  if letters != LETTERS[:len(letters)]:
    raise ValueError(f"option letters {letters!r} are not A, B, C, ... in order")
  return tuple((l, t.strip()) for l, t in opts)


def parse_answer(text: str) -> str:
  m = _ANSWER.match(str(text))
  if not m:
    raise ValueError(f"answer {text!r} is not a letter like '(B)' or 'B'")
  return m.group(1).upper()


def _read_records(path: str) -> list:
  """The records of a JSON array or JSONL file as users have them: a UTF-8 byte-order mark,
  Windows line ends and blank lines (a trailing one included) are accepted."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise MCQFormatError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); convert the file "
                         "to UTF-8") from None
  if not text.strip():
    raise MCQFormatError(f"{path}: empty file: no multiple-choice items")
  stripped = text.lstrip()
  if stripped.startswith("["):
    try:
      records = json.loads(text)
    except json.JSONDecodeError as e:
      raise MCQFormatError(f"{path}:{e.lineno}: malformed JSON array ({e.msg})") from None
  else:
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise MCQFormatError(
            f"{path}:{lineno}: not JSON Lines ({e.msg}); expected a JSON array or one JSON "
            "object per line (XMedBench or MMedBench)") from None
  if not records:
    raise MCQFormatError(f"{path}: empty file: no multiple-choice items")
  return records


def _lower_keys(rec: dict, where: str) -> dict:
  """Keys in any capitalisation ("Question", "OPTIONS", "Answer_idx") as the lower-case keys
  the loaders read; two keys that differ only in case are an error."""
  out: dict = {}
  for k, v in rec.items():
    key = k.lower() if isinstance(k, str) else k
    if key in out:
      raise MCQFormatError(f"{where}: keys {key!r} and {k!r} differ only in capitalisation; keep "
                           "one")
    out[key] = v
  return out


def _first(rec: dict, *keys):
  for k in keys:
    if k in rec:
      return rec[k]
  return None


def _item(rec, path: str, index: int, file_lang: str | None) -> MCQItem | str:
  """One record -> MCQItem; or a str "multi-answer" for items that cannot be single-scored.
  Raises MCQFormatError (unknown format) or ValueError (bad item)."""
  where = f"{path}: item {index}"
  if not isinstance(rec, dict):
    raise MCQFormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
  rec = _lower_keys(rec, where)
  opts, answer = _first(rec, "options", "option"), _first(rec, "answer", "anwer")
  question = rec.get("question")
  if isinstance(opts, dict) and "answer_idx" in rec:  # MMedBench
    options = tuple((str(k).strip().upper(), str(v).strip()) for k, v in opts.items())
    letters = "".join(l for l, _ in options)
    if letters != LETTERS[:len(letters)] or len(options) < 2:
      raise ValueError(f"{where}: option keys {list(opts)} are not A, B, C, ...")
    golds = [a.strip().upper() for a in str(rec["answer_idx"]).split(",") if a.strip()]
    if len(golds) > 1:
      return "multi-answer"
    gold = parse_answer(golds[0] if golds else "")
    lang = rec.get("lang") or file_lang
    if not lang:
      raise MCQFormatError(f"{where}: MMedBench item without a language: add a 'lang' field or "
                           f"name the file after its language ({', '.join(MMEDBENCH_FILE_LANG)})")
    source = rec.get("source") or f"mmedbench-{lang}"
    raw = f"({gold})"
    raw_options = ""
  elif isinstance(opts, str) and answer is not None:  # XMedBench
    options = parse_options(opts)
    gold = parse_answer(answer)
    if not isinstance(rec.get("source"), str) or not rec["source"].strip():
      raise ValueError(f"{where}: missing 'source' (XMedBench items name their benchmark)")
    source = rec["source"].strip()
    lang = rec.get("lang") or source_language(source)
    if not lang:
      raise MCQFormatError(f"{where}: source {source!r} has no known language; add a 'lang' "
                           "field to its items")
    raw = str(answer).strip()
    raw_options = opts
  else:
    raise MCQFormatError(
        f"{where}: not a known multiple-choice format (keys {sorted(rec)}); expected XMedBench "
        "{question, options|option: '(A) ..\\n(B) ..', answer|anwer: '(B)', source} or "
        "MMedBench {question, options: {A: ..}, answer_idx: 'A'}")
  if not isinstance(question, str) or not question.strip():
    raise ValueError(f"{where}: 'question' must be a non-empty string")
  if gold not in "".join(l for l, _ in options):
    raise ValueError(f"{where}: answer {gold!r} is not among its options "
                     f"{''.join(l for l, _ in options)}")
  cls = rec.get("class") or ("major" if lang in MAJOR_LANGUAGES else "minor")
  if cls not in ("major", "minor"):
    raise ValueError(f"{where}: 'class' must be 'major' or 'minor', got {cls!r}")
  return MCQItem(question=question.strip(), options=options, answer=gold, source=source,
                 lang=str(lang), cls=cls, context=str(rec.get("context") or "").strip(),
                 where=where, raw_answer=raw, raw_question=question, raw_options=raw_options,
                 raw_context=None if rec.get("context") is None else str(rec["context"]))


def load_file(path: str, *, on_bad: str = "error", report: LoadReport | None = None) -> list[MCQItem]:
  """Items of one file. on_bad: "error" raises on the first bad item; "skip" skips and counts
  it in `report`. A file in no known format and an empty file always raise."""
  if on_bad not in ("error", "skip"):
    raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
  report = report if report is not None else LoadReport()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"multiple-choice file not found: {path}")
  stem = os.path.splitext(os.path.basename(path))[0].lower()
  file_lang = MMEDBENCH_FILE_LANG.get(stem)
  items = []
  for i, rec in enumerate(_read_records(path)):
    try:
      item = _item(rec, path, i, file_lang)
    except MCQFormatError:
      raise
    except ValueError as e:
      msg = str(e) if str(e).startswith(path) else f"{path}: item {i}: {e}"
      if on_bad == "error":
        raise MCQFormatError(msg + " (set config.mcq.on_bad_item='skip' to skip such items)") from None
      report.add("bad item", msg)
      continue
    if item == "multi-answer":
      report.add("multi-answer", f"{path}: item {i}: several gold answers; single-answer scoring "
                 "skips it")
      continue
    items.append(item)
  if not items:
    raise MCQFormatError(f"{path}: no usable multiple-choice items ({dict(report.skipped)} skipped)")
  return items


def sample_files() -> list[str]:
  """The embedded sample: 120 items in the 12 major languages and 16 in 4 minor ones."""
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sample")
  return [os.path.join(here, "mcq.json"), os.path.join(here, "mcq_minor.json")]


def load(files: Sequence[str], *, on_bad: str = "error", max_per_source: int = 0,
         languages: Sequence[str] | None = None) -> tuple[list[MCQItem], LoadReport]:
  """Items of all files in order; max_per_source > 0 keeps the first N of each source;
  languages keeps only those languages (None: all)."""
  report = LoadReport()
  items = []
  for f in files:
    items.extend(load_file(f, on_bad=on_bad, report=report))
  if languages is not None:
    keep = set(languages)
    items = [it for it in items if it.lang in keep]
  if max_per_source > 0:
    seen = collections.Counter()
    kept = []
    for it in items:
      if seen[it.source] < max_per_source:
        kept.append(it)
        seen[it.source] += 1
    items = kept
  return items, report


# --- Letter extraction: the paper's rules.

_BRACKETED = re.compile(r"[（(]([A-Fa-f])[）)]")
_BARE = re.compile(r"[A-F]")
# Arabic option letters, bracketed on at least one side. The paper's table maps C from س or ك;
# ج (the abjad letter for C) is accepted too.
_ARABIC = (("A", re.compile(r"[（(]?أ[）)]+|[（(]+أ[）)]?")),
           ("B", re.compile(r"[（(]?ب[）)]+|[（(]+ب[）)]?")),
           ("C", re.compile(r"[（(]?[سكج][）)]+|[（(]+[سكج][）)]?")),
           ("D", re.compile(r"[（(]?د[）)]+|[（(]+د[）)]?")))


def first_line(output: str) -> str:
  """The first non-empty line when the output has several lines, else the whole output."""
  if "\n" in output:
    for line in output.split("\n"):
      if line:
        return line
  return output


def extract_letter(output: str) -> str | None:
  """The answer letter of a generated output, or None.

  On the first non-empty line: the most frequent bracketed letter "(B)" / "（B）" (case-
  insensitive; each bracketed Arabic letter found counts once more for its Latin letter); ties go
  to the first seen. Fallback: the most frequent bare capital A-F. Then "Yes." -> A, "No." -> B.
  """
  line = first_line(output)
  counts = collections.Counter(m.upper() for m in _BRACKETED.findall(line))
  for letter, pattern in _ARABIC:
    if pattern.search(line):
      counts[letter] += 1
  if not counts:
    counts = collections.Counter(_BARE.findall(line))
  if not counts:
    return {"Yes.": "A", "No.": "B"}.get(line)
  return max(counts, key=counts.get)  # first seen among the most frequent


# --- Generative prompts.

@dataclasses.dataclass(frozen=True)
class Prompt:
  """Text parts joined by the tokenizer's EOS token: exemplars end `... answer.<eos>`, the next
  part starts with "\\n". chars counts an EOS as its piece text."""
  parts: tuple[str, ...]
  shots: int
  chars: int
  template_lang: str
  exemplars: tuple[str, ...] = ()  # the exemplars' `where`, in prompt order


def _exemplar_text(t, item: MCQItem) -> str:
  q = templates.render_question(t, question=item.question, options=item.options_text,
                                last=item.letters[-1], context=item.context)
  return q + templates.render_answer(t, item.raw_answer or f"({item.answer})")


def build_prompts(items: Sequence[MCQItem], *, shots: int, seed: int, max_chars: int,
                  eos_text: str) -> list[Prompt | None]:
  """One prompt per item (None = skipped: over max_chars even with no exemplar).

  Exemplars: `shots` distinct other items of the same source, drawn with a generator seeded by
  (seed, source), so a run repeats and adding a source does not change another's draws. While
  the prompt is over max_chars, the last exemplar is dropped."""
  by_source = collections.defaultdict(list)
  for i, it in enumerate(items):
    by_source[it.source].append(i)
  prompts: list[Prompt | None] = [None] * len(items)
  for source, idx in by_source.items():
    rng = np.random.default_rng([seed, zlib.crc32(source.encode())])
    for i in idx:
      it = items[i]
      tlang, t = templates.template_for(it.lang)
      others = [j for j in idx if j != i]
      pick = rng.choice(len(others), size=min(shots, len(others)), replace=False) if others else []
      chosen = [items[others[k]] for k in pick]
      exemplars = [_exemplar_text(t, e) for e in chosen]
      question = templates.render_question(t, question=it.question, options=it.options_text,
                                           last=it.letters[-1], context=it.context)
      while True:
        parts = [exemplars[0]] if exemplars else []
        parts += ["\n" + e for e in exemplars[1:]]
        parts.append(("\n" if exemplars else "") + question)
        chars = sum(len(p) for p in parts) + len(eos_text) * (len(parts) - 1)
        if chars <= max_chars or not exemplars:
          break
        exemplars.pop()
      if chars <= max_chars:
        prompts[i] = Prompt(tuple(parts), len(exemplars), chars, tlang,
                            tuple(e.where for e in chosen[:len(exemplars)]))
  return prompts


def prompt_ids(prompt: Prompt, tokenizer) -> list[int]:
  ids = [tokenizer.bos_id]
  for k, part in enumerate(prompt.parts):
    if k:
      ids.append(tokenizer.eos_id)
    ids.extend(tokenizer.encode(part))
  return ids


# --- Log-likelihood requests (lm-evaluation-harness convention).

def loglikelihood_requests(item: MCQItem, choices: str = "text") -> list[tuple[str, str]]:
  """(context, continuation) per option. choices="text": the option texts are the continuations
  (" " + text), after "Question: ..\\nAnswer:"; "letter": the options are listed in the context
  and the continuations are " A", " B", ... (MMLU style)."""
  head = f"{item.context}\n" if item.context else ""
  if choices == "text":
    ctx = f"{head}Question: {item.question}\nAnswer:"
    return [(ctx, " " + text) for _, text in item.options]
  if choices == "letter":
    opts = "\n".join(f"{l}. {t}" for l, t in item.options)
    ctx = f"{head}Question: {item.question}\n{opts}\nAnswer:"
    return [(ctx, " " + l) for l, _ in item.options]
  raise ValueError(f"choices must be 'text' or 'letter', got {choices!r}")


# --- Scoring.

PROTOCOLS = ("apollo", "apollo50", "translated")


def score_generative(items: Sequence[MCQItem], generate: Callable, tokenizer, *, shots: int,
                     seed: int, max_chars: int, protocol: str = "apollo") -> list[dict]:
  """generate(list of (prompt ids, lang)) -> list of output texts. Returns one record per item.

  protocol: "apollo" / "apollo50" (the official prompts, evaluation/apollo.py) or "translated"
  (one template per language, build_prompts above)."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
  # The EOS between exemplars counts as its piece text toward the character limit.
  eos_text = (tokenizer.id_to_piece(tokenizer.eos_id) if hasattr(tokenizer, "id_to_piece")
              else "</s>")
  if protocol == "translated":
    prompts = build_prompts(items, shots=shots, seed=seed, max_chars=max_chars, eos_text=eos_text)
    ids_of = lambda p: prompt_ids(p, tokenizer)
  else:
    prompts = apollo.build_prompts(items, shots=shots, seed=seed, max_chars=max_chars,
                                   eos_text=eos_text, protocol=protocol)
    ids_of = lambda p: apollo.prompt_ids(p, tokenizer, eos_text)
  todo = [i for i, p in enumerate(prompts) if p is not None]
  outputs = generate([(ids_of(prompts[i]), items[i].lang) for i in todo])
  out_of = dict(zip(todo, outputs))
  records = []
  for i, (it, p) in enumerate(zip(items, prompts)):
    rec = {"where": it.where, "source": it.source, "lang": it.lang, "class": it.cls,
           "gold": it.answer}
    if p is None:
      rec.update(skipped=True, reason=f"prompt over {max_chars} characters")
    else:
      pred = extract_letter(out_of[i])
      rec.update(skipped=False, shots=p.shots, exemplars=list(p.exemplars), prompt_chars=p.chars,
                 template=p.template_lang, output=out_of[i], pred=pred, correct=pred == it.answer)
    records.append(rec)
  return records


def score_loglikelihood(items: Sequence[MCQItem], loglikelihood: Callable, *,
                        choices: str = "text") -> list[dict]:
  """loglikelihood(list of (context, continuation, lang)) -> list of (logprob, is_greedy)."""
  reqs, spans = [], []
  for it in items:
    rs = loglikelihood_requests(it, choices)
    spans.append((len(reqs), len(rs)))
    reqs.extend((c, x, it.lang) for c, x in rs)
  scores = loglikelihood(reqs)
  records = []
  for it, (start, n) in zip(items, spans):
    lp = np.asarray([scores[start + k][0] for k in range(n)], np.float64)
    lengths = np.asarray([len(reqs[start + k][1].strip()) or 1 for k in range(n)], np.float64)
    pred = it.letters[int(np.argmax(lp))]
    pred_norm = it.letters[int(np.argmax(lp / lengths))]
    records.append({"where": it.where, "source": it.source, "lang": it.lang, "class": it.cls,
                    "gold": it.answer, "skipped": False, "logprobs": [round(float(x), 4) for x in lp],
                    "pred": pred, "correct": pred == it.answer,
                    "pred_norm": pred_norm, "correct_norm": pred_norm == it.answer})
  return records


def summarize_protocol(records: Sequence[dict], key: str, protocol: str,
                       exclude_from_average: Sequence[str] | None = None) -> dict:
  """The averages of `protocol`: the official ones for apollo / apollo50, `summarize` for
  translated. exclude_from_average None: the protocol's own choice."""
  if protocol == "translated":
    return summarize(records, key, DEFAULT_EXCLUDED_FROM_AVERAGE if exclude_from_average is None
                     else exclude_from_average)
  return apollo.summarize(records, key, exclude_from_average)
