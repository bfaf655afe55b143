"""Synthetic medical languages: a multilingual corpus with known family structure, generated here.

    python -m medmoe_jax.data.synthetic --out DIR [--families 4] [--languages_per_family 3]
        [--docs 2000] [--sizes qaa=20000,qba=500] [--seed 0] [--tokenizer_vocab 2048] [--stats]

A controlled testbed for language expansion: every language expresses the same medical content
(patients, symptoms, body parts, diagnoses, drugs, doses, question and answer) in its own words,
and which languages are related, and how closely, is decided here rather than guessed. With it a
user can check, with nothing to download, whether a method transfers within a family, whether a
router sends a language to its own family's expert, and how much of the original languages a
model forgets when it learns new ones.

How a language is made (all of it a pure function of the seed):
- Content. Document i is a few clinical cases and facts drawn from a small fixed knowledge base
  (each diagnosis has its symptoms, body part, drug and dose) as language-free clauses. By
  default (`parallel`) document i has the same content in every language, and it is held out in
  every language together (the pipeline's validation split is by record index).
- Words. A deep proto-lexicon gives every concept a root. A family keeps a share of those roots
  (`keep_deep`) and coins the rest in its own phonology (consonants, vowels, syllable shapes);
  its sound changes and spelling then apply to all of them. A language coins a share of its own
  words (`innovate`) and adds sound changes of its own. Drug names are international: every
  language adapts the same INN spelling with its sound changes.
- Grammar. A family fixes word order (SVO, SOV, VSO), adpositions (before or after the noun),
  adjective and numeral position, plural and past-tense affixes, an object case suffix or none,
  an article or none, and where the question particle goes; a language departs from its family
  on one of these. Affixes are words of the family's proto-language, so they change with it.
- Codes. Languages get ISO 639-3 codes from the range reserved for local use, qaa-qtz: family k
  is q<letter k>, its languages q<k>a, q<k>b, ... Family names are "Synthetic A", "Synthetic B",
  ... `languages.json` in DIR holds the family table (`custom_families`), every language's
  grammar and sound changes, and the settings.
- Training on it. DIR/config.py wraps any method config:
    python -m medmoe_jax.train --config=DIR/config.py:configs/post_moe.py
  sets config.data.sources to DIR/*.jsonl, config.languages.use to every language of the corpus
  and its families as the family table (table "custom", config.languages.custom_families).
  Any other --config.KEY flag still applies (e.g. a subset in --config.languages.use). In
  Python, `configure(c, DIR)` does the same to a config. The real corpus is the method config
  alone: --config=configs/post_moe.py --config.data.sources=...

Files: DIR/<code>.jsonl, one document a line, `{"text": ..., "lang": code}`, the format of the
embedded sample (medmoe_jax/data/sample/text). Documents stream to disk: any size, constant
memory. The same seed and settings give byte-identical files.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import random
import re
import string
import sys
from collections.abc import Iterator, Mapping, Sequence

FORMAT = "medmoe-synthetic-1"

# --------------------------------------------------------------------------- the content

# Concepts by part of speech. Function words (adpositions, particles) are concepts too: every
# language has its own word for each.
NOUNS = ("patient", "man", "woman", "child", "doctor", "day", "week", "year", "time", "drug",
         "disease", "symptom", "question", "answer", "blood", "test", "result", "dose", "side_effect",
         # symptoms
         "fever", "cough", "headache", "nausea", "rash", "fatigue", "dizziness", "pain", "swelling",
         "itching", "vomiting", "breathlessness", "thirst", "diarrhoea", "chills",
         # body parts
         "head", "chest", "stomach", "skin", "throat", "back", "leg", "arm", "eye", "ear", "heart",
         "lung", "kidney", "liver", "joint", "nose",
         # diagnoses
         "flu", "pneumonia", "migraine", "gastritis", "dermatitis", "asthma", "diabetes",
         "hypertension", "malaria", "anaemia", "otitis", "arthritis", "conjunctivitis",
         "kidney_infection", "sinusitis", "food_poisoning")
VERBS = ("have", "feel", "be", "find", "give", "take", "cause", "treat", "affect", "measure",
         "show", "come")
ADJECTIVES = ("mild", "severe", "high", "low", "new", "old", "which", "this", "every")
FUNCTION = ("in", "for", "with", "per", "of", "and", "not", "article", "question_particle",
            "at")
CONCEPTS = NOUNS + VERBS + ADJECTIVES + FUNCTION
GRAMMATICAL = ("plural", "past", "object")  # affixes

# The knowledge base: diagnosis -> (symptoms, body part, drug, dose mg, times a day, days).
KB = {
    "flu": (("fever", "cough", "fatigue", "chills"), "throat", "oseltamivir", 75, 2, 5),
    "pneumonia": (("fever", "cough", "breathlessness", "chills"), "lung", "amoxicillin", 500, 3, 7),
    "migraine": (("headache", "nausea", "dizziness"), "head", "sumatriptan", 50, 1, 1),
    "gastritis": (("pain", "nausea", "vomiting"), "stomach", "omeprazole", 20, 1, 14),
    "dermatitis": (("rash", "itching", "swelling"), "skin", "hydrocortisone", 10, 2, 10),
    "asthma": (("breathlessness", "cough", "fatigue"), "chest", "salbutamol", 100, 4, 30),
    "diabetes": (("thirst", "fatigue", "dizziness"), "blood", "metformin", 500, 2, 90),
    "hypertension": (("headache", "dizziness", "fatigue"), "heart", "amlodipine", 5, 1, 90),
    "malaria": (("fever", "chills", "headache", "vomiting"), "blood", "artemether", 80, 2, 3),
    "anaemia": (("fatigue", "dizziness", "breathlessness"), "blood", "ferrous_sulfate", 200, 1, 60),
    "otitis": (("pain", "fever", "swelling"), "ear", "amoxicillin", 250, 3, 7),
    "arthritis": (("pain", "swelling", "fatigue"), "joint", "naproxen", 250, 2, 14),
    "conjunctivitis": (("itching", "swelling", "pain"), "eye", "chloramphenicol", 5, 4, 7),
    "kidney_infection": (("pain", "fever", "vomiting"), "kidney", "ciprofloxacin", 500, 2, 7),
    "sinusitis": (("headache", "pain", "swelling"), "nose", "amoxicillin", 500, 3, 10),
    "food_poisoning": (("diarrhoea", "vomiting", "nausea"), "stomach", "oral_rehydration_salts",
                       200, 4, 2),
}
SIDE_EFFECTS = {"oseltamivir": "nausea", "amoxicillin": "rash", "sumatriptan": "dizziness",
                "omeprazole": "headache", "hydrocortisone": "itching", "salbutamol": "headache",
                "metformin": "diarrhoea", "amlodipine": "swelling", "artemether": "dizziness",
                "ferrous_sulfate": "nausea", "naproxen": "pain", "chloramphenicol": "itching",
                "ciprofloxacin": "nausea", "oral_rehydration_salts": "vomiting"}
DRUGS = tuple(sorted({v[2] for v in KB.values()}))


@dataclasses.dataclass(frozen=True)
class NP:
  """A noun phrase: a concept (or a literal: drug name, unit), its number and modifiers."""
  head: str
  plural: bool = False
  adjs: tuple = ()
  num: int | None = None
  definite: bool = False
  literal: bool = False  # head is a drug name or unit, not a lexicon concept
  coord: tuple = ()      # further NPs joined with "and"


@dataclasses.dataclass(frozen=True)
class Clause:
  verb: str
  subj: NP | None
  obj: NP | None = None
  obl: tuple = ()        # (adposition concept or "", NP)
  past: bool = False
  neg: bool = False
  question: bool = False
  label: str = ""        # "question" / "answer": a "Label:" prefix
  bare: NP | None = None  # an answer: the label and a noun phrase, no verb


def _rng(seed: int, *key) -> random.Random:
  # A string seed is hashed with SHA-512 by `random`: the same on every machine and process.
  return random.Random("/".join(map(str, (seed, *key))))


def _case(rng: random.Random) -> list[Clause]:
  """One clinical case: complaint, location, diagnosis, treatment, maybe a side effect, Q&A."""
  diag = rng.choice(sorted(KB))
  symptoms, body, drug, mg, times, days = KB[diag]
  who = rng.choice(("man", "woman", "child", "patient"))
  age = rng.randint(2, 12) if who == "child" else rng.randint(18, 85)
  chosen = rng.sample(symptoms, rng.randint(1, min(3, len(symptoms))))
  adjs = (rng.choice(("mild", "severe")),) if rng.random() < 0.4 else ()
  first = NP(chosen[0], adjs=adjs, coord=tuple(NP(s) for s in chosen[1:]))
  duration = rng.randint(1, 14)
  out = [Clause("have", NP(who, adjs=("new",) if rng.random() < 0.2 else ()), first,
                obl=(("of", NP("year", plural=True, num=age)),
                     ("for", NP("day", plural=duration > 1, num=duration))), past=True)]
  if rng.random() < 0.6:
    out.append(Clause("be", NP(chosen[0], definite=True), None,
                      obl=(("in", NP(body, definite=True)),)))
  if rng.random() < 0.3:
    level = "high" if diag in ("diabetes", "hypertension") else "low"
    out.append(Clause("show", NP("test", definite=True), NP("result", adjs=(level,)),
                      obl=(("of", NP("blood")),), past=True))
  out.append(Clause("find", NP("doctor", definite=True), NP(diag), past=True))
  if rng.random() < 0.2:  # a dose adjusted to the patient
    mg = max(1, mg // 2 if who == "child" else mg)
  out.append(Clause("give", NP("doctor", definite=True), NP(drug, literal=True),
                    obl=(("", NP("mg", num=mg, literal=True)),
                         ("", NP("time", plural=times > 1, num=times)), ("per", NP("day")),
                         ("for", NP("day", plural=days > 1, num=days))), past=True))
  if rng.random() < 0.3:
    out.append(Clause("cause", NP(drug, literal=True), NP(SIDE_EFFECTS[drug], adjs=("mild",)),
                      neg=rng.random() < 0.5))
  kind = rng.random()
  if kind < 0.4:
    out += [Clause("have", NP(who, definite=True), NP("disease", adjs=("which",)),
                   question=True, label="question"),
            Clause("", None, label="answer", bare=NP(diag))]
  elif kind < 0.7:
    out += [Clause("give", NP("doctor", definite=True), NP("drug", adjs=("which",)), past=True,
                   question=True, label="question"),
            Clause("", None, label="answer", bare=NP(drug, literal=True))]
  return out


def _fact(rng: random.Random) -> list[Clause]:
  """A general statement of the knowledge base."""
  diag = rng.choice(sorted(KB))
  symptoms, body, drug, _, _, _ = KB[diag]
  kind = rng.randrange(4)
  if kind == 0:
    a, b = rng.sample(symptoms, 2)
    return [Clause("cause", NP(diag), NP(a, coord=(NP(b),)))]
  if kind == 1:
    return [Clause("treat", NP(drug, literal=True), NP(diag))]
  if kind == 2:
    return [Clause("affect", NP(diag), NP(body, definite=True))]
  return [Clause("take", NP("patient", plural=True, adjs=("every",)), NP(drug, literal=True),
                 obl=(("with", NP(diag)),))]


def document_content(seed: int, index: int, lang: str | None = None) -> list[list[Clause]]:
  """Document `index`: a list of paragraphs (cases and facts), each a list of clauses. With
  `lang` None (parallel corpus) the same for every language."""
  rng = _rng(seed, "doc", index) if lang is None else _rng(seed, "doc", lang, index)
  paras = [_case(rng) for _ in range(rng.randint(1, 3))]
  for _ in range(rng.randint(0, 3)):
    paras.insert(rng.randint(0, len(paras)), _fact(rng))
  return paras


# --------------------------------------------------------------------------- the languages

CONSONANTS = "ptkbdgmnslrhwyfz"
VOWELS = "aeiou"
TEMPLATES = ("CV", "CVC", "V", "CCV", "CVV")
# Sound changes: (name, pattern, replacement), applied to a word in order.
SOUND_CHANGES = (
    ("p>f", r"p", "f"), ("k>h", r"k(?!h)", "h"), ("t>s/_i", r"t(?=[ie])", "s"),
    ("k>c/_i", r"k(?=[ie])", "c"), ("b>v/V_V", r"(?<=[aeiou])b(?=[aeiou])", "v"),
    ("d>r/V_V", r"(?<=[aeiou])d(?=[aeiou])", "r"), ("g>y/V_V", r"(?<=[aeiou])g(?=[aeiou])", "y"),
    ("t>d/V_V", r"(?<=[aeiou])t(?=[aeiou])", "d"), ("p>b/V_V", r"(?<=[aeiou])p(?=[aeiou])", "b"),
    ("-V", r"(?<=[^aeiou])[aeiou]$", ""), ("+a", r"(?<=[^aeiouy])$", "a"),
    ("a>o", r"a", "o"), ("u>o", r"u", "o"), ("e>i", r"e", "i"), ("o>u", r"o", "u"),
    ("s>sh", r"s(?!h)", "sh"), ("n>ng/_#", r"n$", "ng"), ("l>r", r"l", "r"), ("r>l", r"r", "l"),
    ("CC>C", r"([^aeiou])\1", r"\1"), ("w>v", r"w", "v"), ("z>s", r"z", "s"),
    ("ai>e", r"ai", "e"), ("au>o", r"au", "o"), ("h-", r"^h(?=[aeiou])", ""),
    ("m>n/_#", r"m$", "n"), ("i>e/_#", r"i$", "e"), ("f>p", r"f", "p"))
# Spellings a family may use (applied last, to whole words).
ORTHOGRAPHIES = (
    (), (("sh", "x"), ("ch", "c")), (("y", "j"), ("ng", "ŋ")), (("u", "ou"),), (("e", "é"),),
    (("w", "u"), ("y", "i")), (("o", "ö"), ("k", "q")), (("a", "á"), ("sh", "sz")),
    (("s", "ss"),), (("i", "ī"), ("u", "ū")))
GRAMMAR_CHOICES = {
    "order": ("SVO", "SOV", "VSO"), "adposition": ("pre", "post"), "adjective": ("before", "after"),
    "numeral": ("before", "after"), "plural": ("suffix", "prefix"),
    "object_case": ("none", "suffix"), "article": ("none", "before", "after"),
    "question": ("initial", "final")}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What decides the corpus (saved in languages.json)."""
  seed: int = 0
  families: int = 4
  languages_per_family: int = 3
  docs: int = 1000              # documents per language unless `sizes` names it
  sizes: tuple = ()             # ((code, docs), ...) per-language overrides
  keep_deep: float = 0.25       # share of deep proto-roots a family keeps (the rest it coins)
  innovate: float = 0.15        # share of its family's words a language replaces with its own
  family_sound_changes: int = 3
  language_sound_changes: int = 2
  parallel: bool = True         # document i has the same content in every language

  def codes(self) -> list[str]:
    return [code for fam in family_table(self).values() for code in fam]

  def docs_of(self, code: str) -> int:
    return dict(self.sizes).get(code, self.docs)


def family_name(k: int) -> str:
  return f"Synthetic {string.ascii_uppercase[k]}"


def family_table(s: Settings) -> dict[str, list[str]]:
  """Family name -> language codes, in expert-id order."""
  if not 1 <= s.families <= 20 or not 1 <= s.languages_per_family <= 26:
    raise ValueError(f"families must be in 1..20 and languages_per_family in 1..26 (ISO 639-3 "
                     f"local-use codes qaa-qtz), got {s.families}, {s.languages_per_family}")
  return {family_name(k): [f"q{string.ascii_lowercase[k]}{string.ascii_lowercase[j]}"
                           for j in range(s.languages_per_family)]
          for k in range(s.families)}


@dataclasses.dataclass
class Phonology:
  consonants: str
  vowels: str
  templates: tuple

  def word(self, rng: random.Random, syllables: int) -> str:
    out = []
    for _ in range(syllables):
      for slot in rng.choice(self.templates):
        out.append(rng.choice(self.consonants if slot == "C" else self.vowels))
    return "".join(out)


DEEP = Phonology(CONSONANTS, VOWELS, TEMPLATES)


def _syllables(concept: str) -> int:
  if concept in FUNCTION or concept in GRAMMATICAL:
    return 1
  return 2 if concept in VERBS or concept in ADJECTIVES else 3


def _apply(word: str, rules: Sequence[tuple]) -> str:
  for _, pattern, repl in rules:
    word = re.sub(pattern, repl, word)
  return word


def _spell(word: str, orthography: Sequence[tuple]) -> str:
  for a, b in orthography:
    word = word.replace(a, b)
  return word


@dataclasses.dataclass
class Language:
  code: str
  family: str
  name: str
  grammar: dict
  sound_changes: list       # names, family's then the language's
  orthography: tuple
  lexicon: dict             # concept or affix -> form (before spelling)
  _rules: tuple = ()

  def adapt(self, word: str) -> str:
    """A loanword (a drug name's INN spelling) through this language's sound changes."""
    return " ".join(_apply(w, self._rules) or w for w in word.split("_"))

  def describe(self) -> dict:
    return {"family": self.family, "name": self.name, "grammar": self.grammar,
            "sound_changes": self.sound_changes,
            "orthography": ["%s>%s" % p for p in self.orthography]}


def _family(s: Settings, k: int) -> tuple[Phonology, list, tuple, dict, dict]:
  """Family k: its phonology, sound changes, spelling, grammar and proto-lexicon."""
  rng = _rng(s.seed, "family", k)
  phon = Phonology("".join(sorted(rng.sample(CONSONANTS, rng.randint(8, 12)))),
                   "".join(sorted(rng.sample(VOWELS, rng.randint(3, 5)))),
                   tuple(sorted(rng.sample(TEMPLATES, rng.randint(2, 3)))))
  if "V" not in "".join(phon.templates):
    phon.templates += ("CV",)
  rules = rng.sample(SOUND_CHANGES, s.family_sound_changes)
  orth = ORTHOGRAPHIES[k % len(ORTHOGRAPHIES)]
  grammar = {key: rng.choice(vals) for key, vals in GRAMMAR_CHOICES.items()}
  proto = {}
  for concept in CONCEPTS + GRAMMATICAL:
    r = _rng(s.seed, "proto", k, concept)
    n = _syllables(concept)
    if concept not in GRAMMATICAL and r.random() < s.keep_deep:
      deep = DEEP.word(_rng(s.seed, "deep", concept), n)
      proto[concept] = _apply(deep, rules) or deep
    else:
      proto[concept] = _apply(phon.word(r, n), rules) or phon.word(r, n)
  return phon, rules, orth, grammar, proto


def make_languages(s: Settings) -> dict[str, Language]:
  """Every language of the corpus, by code."""
  out = {}
  for k, (fam, codes) in enumerate(family_table(s).items()):
    phon, fam_rules, orth, grammar, proto = _family(s, k)
    for code in codes:
      rng = _rng(s.seed, "language", code)
      pool = [r for r in SOUND_CHANGES if r not in fam_rules]
      own = rng.sample(pool, s.language_sound_changes)
      g = dict(grammar)
      key = rng.choice(sorted(GRAMMAR_CHOICES))  # one departure from the family
      g[key] = rng.choice([v for v in GRAMMAR_CHOICES[key] if v != g[key]])
      lex, used = {}, set()
      for concept in CONCEPTS + GRAMMATICAL:
        r = _rng(s.seed, "lexicon", code, concept)
        form = proto[concept]
        if r.random() < s.innovate:
          form = _apply(phon.word(r, _syllables(concept)), fam_rules)
        form = _apply(form, own) or form
        while not form or form in used:  # homophones would make the content ambiguous
          form += r.choice(phon.vowels)
        used.add(form)
        lex[concept] = form
      name = _spell(_apply(phon.word(rng, 2), fam_rules + own), orth).capitalize() or code
      out[code] = Language(code, fam, name, g, [r[0] for r in fam_rules + own], orth, lex,
                           tuple(fam_rules + own))
  return out


# --------------------------------------------------------------------------- realisation


class Realiser:
  """Clauses -> sentences of one language."""

  def __init__(self, lang: Language):
    self.lang, self.g, self.lex = lang, lang.grammar, lang.lexicon

  def word(self, concept: str) -> str:
    return self.lex[concept]

  def _affix(self, stem: str, affix: str, position: str = "suffix") -> str:
    form = self.lex[affix]
    return f"{form}{stem}" if position == "prefix" else f"{stem}{form}"

  def np(self, np: NP, role: str = "") -> list[str]:
    if np.literal:
      head = np.head if np.head == "mg" else self.lang.adapt(np.head)
    else:
      head = self.word(np.head)
      if np.plural:
        head = self._affix(head, "plural", self.g["plural"])
    if role == "obj" and self.g["object_case"] == "suffix":
      head = self._affix(head.replace(" ", "-"), "object")
    words = [head]
    adjs = [self.word(a) for a in np.adjs]
    words = adjs + words if self.g["adjective"] == "before" else words + adjs
    if np.num is not None:
      words = [str(np.num)] + words if self.g["numeral"] == "before" else words + [str(np.num)]
    if np.definite and self.g["article"] != "none":
      art = self.word("article")
      words = [art] + words if self.g["article"] == "before" else words + [art]
    for other in np.coord:
      words += [self.word("and")] + self.np(other, role)
    return words

  def pp(self, adp: str, np: NP) -> list[str]:
    words = self.np(np)
    if not adp:
      return words
    return [self.word(adp)] + words if self.g["adposition"] == "pre" else words + [self.word(adp)]

  def clause(self, c: Clause) -> str:
    """One sentence, spelled in the language's orthography (labels and answers too)."""
    label = f"{_spell(self.word(c.label), self.lang.orthography).capitalize()}: " if c.label else ""
    if c.bare is not None:
      return label + _spell(" ".join(self.np(c.bare)), self.lang.orthography) + "."
    verb = [self._affix(self.word(c.verb), "past") if c.past else self.word(c.verb)]
    if c.neg:
      verb = [self.word("not")] + verb
    subj = self.np(c.subj) if c.subj else []
    obj = self.np(c.obj, "obj") if c.obj else []
    obl = [w for adp, np in c.obl for w in self.pp(adp, np)]
    order = self.g["order"]
    if order == "SVO":
      words = subj + verb + obj + obl
    elif order == "SOV":
      words = subj + obj + obl + verb
    else:
      words = verb + subj + obj + obl
    if c.question:
      q = self.word("question_particle")
      words = [q] + words if self.g["question"] == "initial" else words + [q]
    words = [_spell(w, self.lang.orthography) for w in words]
    text = " ".join(words)
    return label + text[:1].upper() + text[1:] + ("?" if c.question else ".")

  def document(self, paras: list[list[Clause]]) -> str:
    return "\n\n".join(" ".join(self.clause(c) for c in p) for p in paras)


# --------------------------------------------------------------------------- the corpus


class Corpus:
  """The languages of a Settings and their documents (generated on demand)."""

  def __init__(self, settings: Settings):
    self.settings = settings
    self.languages = make_languages(settings)
    self.table = family_table(settings)
    self._realisers = {c: Realiser(lang) for c, lang in self.languages.items()}
    unknown = sorted(set(dict(settings.sizes)) - set(self.languages))
    if unknown:
      raise ValueError(f"sizes: {unknown[0]!r} is not a language of this corpus "
                       f"({', '.join(self.languages)})")

  def document(self, code: str, index: int) -> str:
    s = self.settings
    return self._realisers[code].document(
        document_content(s.seed, index, None if s.parallel else code))

  def documents(self, code: str, count: int | None = None) -> Iterator[str]:
    for i in range(self.settings.docs_of(code) if count is None else count):
      yield self.document(code, i)

  def custom_families(self) -> dict[str, str]:
    return {code: lang.family for code, lang in self.languages.items()}

  def metadata(self) -> dict:
    return {"format": FORMAT, "generator": "medmoe_jax.data.synthetic",
            "settings": json.loads(json.dumps(dataclasses.asdict(self.settings))),
            "families": self.table, "custom_families": self.custom_families(),
            "docs": {c: self.settings.docs_of(c) for c in self.languages},
            "languages": {c: lang.describe() for c, lang in self.languages.items()}}

  def write(self, out: str | os.PathLike, *, log=None) -> dict:
    """DIR/<code>.jsonl (streamed), DIR/languages.json and DIR/config.py. Returns the metadata."""
    out = os.path.abspath(os.path.expanduser(str(out)))
    os.makedirs(out, exist_ok=True)
    meta = self.metadata()
    chars = {}
    for code in self.languages:
      path = os.path.join(out, f"{code}.jsonl")
      n = 0
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        for text in self.documents(code):
          f.write(json.dumps({"text": text, "lang": code}, ensure_ascii=False) + "\n")
          n += len(text)
      os.replace(path + ".tmp", path)  # a reader never sees half a file
      chars[code] = n
      if log:
        log(f"wrote {path}: {self.settings.docs_of(code):,} documents, {n:,} characters")
    meta["chars"] = chars
    with open(os.path.join(out, "languages.json"), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2, ensure_ascii=False)
    path = os.path.join(out, "config.py")
    with open(path, "w", encoding="utf-8") as f:
      f.write(CONFIG_PY.format(path=path))
    return meta


CONFIG_PY = '''"""Any training config on the synthetic corpus in this directory (written by
medmoe_jax.data.synthetic): the method config's file and size follow the colon.

  python -m medmoe_jax.train --config={path}:configs/post_moe.py[:SIZE] [--config.KEY=...]
"""
import os

from medmoe_jax.data import synthetic


def get_config(arg=None):
  return synthetic.config_for(arg, os.path.dirname(os.path.abspath(__file__)))
'''


def load_metadata(out: str | os.PathLike) -> dict:
  """DIR/languages.json of a written corpus; ValueError naming the file when it is not one."""
  path = os.path.join(os.path.expanduser(str(out)), "languages.json")
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a synthetic corpus ({e}); write one with "
                     "`python -m medmoe_jax.data.synthetic --out DIR`") from None
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
  return meta


def configure(c, out: str | os.PathLike, languages: Sequence[str] | None = None) -> None:
  """Points training config `c` at the corpus in `out`: sources, languages.use (all, or
  `languages`), and the corpus's families as the only family table (table "custom")."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  meta = load_metadata(out)
  codes = list(languages) if languages is not None else list(meta["custom_families"])
  missing = [x for x in codes if x not in meta["custom_families"]]
  if missing:
    raise ValueError(f"language {missing[0]!r} is not in the synthetic corpus {out} "
                     f"({', '.join(meta['custom_families'])})")
  c.data.sources = os.path.join(os.path.abspath(os.path.expanduser(str(out))), "*.jsonl")
  c.languages.table = "custom"
  c.languages.use = tuple(codes)
  c.languages.custom_families = ml_collections.ConfigDict(dict(meta["custom_families"]))


def config_for(spec: str | None, out: str | os.PathLike):
  """The training config `spec` ("configs/post_moe.py[:ARG]", as --config takes it) on the corpus
  in `out`: what DIR/config.py returns."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if not spec:
    raise ValueError(f"name the method config after the colon: --config="
                     f"{os.path.join(str(out), 'config.py')}:configs/post_moe.py")
  path, _, arg = spec.partition(":")
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise ValueError(f"config file {path} not found (the path after {os.path.join(str(out), 'config.py')}:)")
  module = importlib.util.spec_from_file_location("medmoe_synthetic_method_config", path)
  mod = importlib.util.module_from_spec(module)
  module.loader.exec_module(mod)
  c = mod.get_config(arg or None)
  configure(c, out)
  return c


# --------------------------------------------------------------------------- measuring it


def char_ngrams(texts: Sequence[str], n: int = 3) -> collections.Counter:
  counts: collections.Counter = collections.Counter()
  for t in texts:
    for word in re.findall(r"[^\W\d_]+", t.lower()):
      w = f" {word} "
      counts.update(w[i:i + n] for i in range(len(w) - n + 1))
  return counts


def cosine(a: Mapping, b: Mapping) -> float:
  dot = sum(v * b.get(k, 0) for k, v in a.items())
  na = math.sqrt(sum(v * v for v in a.values()))
  nb = math.sqrt(sum(v * v for v in b.values()))
  return dot / (na * nb) if na and nb else 0.0


def similarity(corpus: Corpus, docs: int = 50, n: int = 3) -> dict[tuple[str, str], float]:
  """Cosine similarity of character n-gram counts (words only) over the first `docs`
  documents, for every pair of languages."""
  grams = {c: char_ngrams(list(corpus.documents(c, docs)), n) for c in corpus.languages}
  codes = list(grams)
  return {(a, b): cosine(grams[a], grams[b]) for i, a in enumerate(codes) for b in codes[i + 1:]}


def family_contrast(corpus: Corpus, sims: Mapping[tuple[str, str], float]) -> dict:
  """Mean and extremes of the pair similarities within families and across them."""
  fam = corpus.custom_families()
  within = [v for (a, b), v in sims.items() if fam[a] == fam[b]]
  across = [v for (a, b), v in sims.items() if fam[a] != fam[b]]
  out = {}
  for name, vals in (("within", within), ("across", across)):
    if vals:
      out[name] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}
  return out


# --------------------------------------------------------------------------- CLI


def _sizes(value: str) -> tuple:
  out = []
  for item in filter(None, (x.strip() for x in value.split(","))):
    code, _, n = item.partition("=")
    if not n.isdigit():
      raise argparse.ArgumentTypeError(f"--sizes: {item!r} is not CODE=DOCS")
    out.append((code.strip(), int(n)))
  return tuple(out)


def main(argv=None) -> int:
  from medmoe_jax.training import faults
  p = faults.ArgumentParser(prog="python -m medmoe_jax.data.synthetic",
                            description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="output directory")
  d = Settings()
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--families", type=int, default=d.families)
  p.add_argument("--languages_per_family", type=int, default=d.languages_per_family)
  p.add_argument("--docs", type=int, default=d.docs, help="documents per language")
  p.add_argument("--sizes", type=_sizes, default=(), help="per-language documents, CODE=N,...")
  p.add_argument("--keep_deep", type=float, default=d.keep_deep)
  p.add_argument("--innovate", type=float, default=d.innovate)
  p.add_argument("--not_parallel", action="store_true",
                 help="different content in every language (default: document i is parallel)")
  p.add_argument("--tokenizer_vocab", type=int, default=0,
                 help="also train a sentencepiece BPE tokenizer of this size, DIR/tokenizer.model")
  p.add_argument("--stats", action="store_true",
                 help="print the character-trigram similarity within and across families")
  a = p.parse_args(argv)
  if a.docs < 0 or any(n < 0 for _, n in a.sizes) or not 0 <= a.keep_deep <= 1 \
      or not 0 <= a.innovate <= 1:
    print("error: --docs/--sizes must be >= 0, --keep_deep/--innovate in [0, 1]", file=sys.stderr)
    return 2
  s = Settings(seed=a.seed, families=a.families, languages_per_family=a.languages_per_family,
               docs=a.docs, sizes=a.sizes, keep_deep=a.keep_deep, innovate=a.innovate,
               parallel=not a.not_parallel)
  try:
    corpus = Corpus(s)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  corpus.write(a.out, log=print)
  if a.tokenizer_vocab:
    tok = train_corpus_tokenizer(corpus, a.out, a.tokenizer_vocab)
    print(f"wrote {tok.name}: vocab_size={tok.vocab_size}")
  if a.stats:
    c = family_contrast(corpus, similarity(corpus))
    for k, v in c.items():
      print(f"character-trigram cosine {k} families: mean {v['mean']:.3f} "
            f"(min {v['min']:.3f}, max {v['max']:.3f})")
  print(f"train on it: python -m medmoe_jax.train "
        f"--config={os.path.join(os.path.abspath(a.out), 'config.py')}:configs/post_moe.py")
  return 0


def train_corpus_tokenizer(corpus: Corpus, out: str, vocab_size: int, docs: int = 300):
  """A BPE tokenizer on the first `docs` documents of every language: DIR/tokenizer.model."""
  from medmoe_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
  texts = [t for code in corpus.languages
           for t in corpus.documents(code, min(docs, corpus.settings.docs_of(code)))]
  return tokenizer.train_tokenizer(texts, os.path.join(out, "tokenizer.model"), vocab_size)


if __name__ == "__main__":
  sys.exit(main())
