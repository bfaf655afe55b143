"""Offline language identification for records that carry no `lang`: py3langid, restricted.

Why py3langid: its model ships inside the wheel (numpy arrays, no pickle, no download), it is
deterministic, and it can be restricted to a candidate set, which is what makes it usable here:
a source's untagged records are classified only among the languages the config trains on (or the
source's `detect` list), never into a language the run does not know.

Its 140 labels do not cover every language medmoe_jax knows (e.g. ceb, su, ilo, doi, co, mai, gn,
ckb, bm of the Apollo-50): such languages cannot be detected, so a source whose untagged records
may be in one of them must declare the language (`lang`) or narrow `detect`. The builder refuses
to guess (see sources.py).

Only the first MAX_CHARS characters are classified: the language of a document is settled long
before its end, and detection then costs the same per document whatever its length.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

MAX_CHARS = 2000
# Below this normalised probability the choice is still taken, but counted as low confidence in
# the statistics so a user can look at those records.
LOW_CONFIDENCE = 0.5


@functools.cache
def _model():
  from py3langid.langid import MODEL_FILE, LanguageIdentifier

  return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@functools.cache
def detectable() -> frozenset[str]:
  """The language codes the detector can choose ('zxx', no linguistic content, excluded)."""
  return frozenset(_model().labels) - {"zxx"}


class Detector:
  """classify(text) -> (lang, probability), over a fixed candidate set."""

  def __init__(self, candidates: Sequence[str]):
    candidates = sorted(set(candidates))
    if not candidates:
      raise ValueError("language detection needs at least one candidate language")
    missing = [c for c in candidates if c not in detectable()]
    if missing:
      raise ValueError(f"the language detector cannot detect {missing}")
    self.candidates = tuple(candidates)
    self._single = candidates[0] if len(candidates) == 1 else None
    if self._single is None:
      # A private copy: set_languages mutates the identifier, and sources may differ in candidates.
      from py3langid.langid import LanguageIdentifier

      m = _model()
      self._id = LanguageIdentifier(m.nb_ptc, m.nb_pc, m.nb_classes, m.tk_nextmove, m.tk_output,
                                    norm_probs=True, tk_row=m.tk_row)
      self._id.set_languages(self.candidates)

  def classify(self, text: str) -> tuple[str, float]:
    if self._single is not None:
      return self._single, 1.0
    lang, prob = self._id.classify(text[:MAX_CHARS])
    return lang, float(prob)
