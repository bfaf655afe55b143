"""Multiple choice without a model: file formats and bad input, the paper's letter extraction,
seeded few-shot prompts, acc/acc_norm arithmetic and the averages."""
import json

import pytest

from medmoe_jax.data.tokenizer import load_tokenizer
from medmoe_jax.evaluation import mcq


@pytest.mark.parametrize("output,letter", [
    # English: bracketed letters, the most frequent wins, ties go to the first seen.
    ("The correct answer is (B).", "B"),
    ("(C) is wrong; the answer is (B), definitely (B).", "B"),
    ("(d) and (A)", "D"),
    # Only the first non-empty line counts.
    ("\n\nThe correct answer is (A).\nNo wait, (C).", "A"),
    # Full-width brackets (Chinese, Japanese).
    ("正确答案是（C）。", "C"),
    ("正しい答えは（Ｄ）ではなく（D）です。", "D"),
    ("정답은 (E)입니다.", "E"),
    # Bare-letter fallback (the paper's: any capital A-F, most frequent).
    ("La respuesta correcta es C", "C"),
    ("Die richtige Antwort ist B, weil B", "B"),
    ("Правильный ответ: A", "A"),  # Cyrillic А would not count; this is a Latin A
    # Yes/No (RuMedDaNet-style two-option items).
    ("Yes.", "A"),
    ("No.", "B"),
    ("\nNo.\n(C)", "B"),
    # Arabic letters, bracketed on at least one side.
    ("الإجابة الصحيحة هي (ب)", "B"),
    ("الإجابة الصحيحة هي د)", "D"),
    ("(ج) هي الإجابة", "C"),
    ("(أ)", "A"),
    # Nothing to extract.
    ("je ne sais pas", None),
    ("", None),
    ("yes", None),
    ("Ответ: Б", None),  # Cyrillic letters are not option letters
])
def test_extract_letter(output, letter):
  assert mcq.extract_letter(output) == letter


def test_extract_bracketed_beats_bare_and_arabic_adds_votes():
  # A bracketed letter is preferred over more frequent bare letters.
  assert mcq.extract_letter("ABBA BAD CAB (C)") == "C"
  # (B) once + Arabic ب once = 2 votes for B against (A) once.
  assert mcq.extract_letter("(A) (B) (ب)") == "B"


def _write(tmp_path, name, data, jsonl=False):
  p = tmp_path / name
  if jsonl:
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in data) + "\n", encoding="utf-8")
  else:
    p.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
  return str(p)


def test_sample_files_load():
  items, report = mcq.load(mcq.sample_files())
  assert len(items) == 136 and not report.skipped
  assert {it.lang for it in items if it.cls == "major"} == set(mcq.MAJOR_LANGUAGES)
  assert {it.cls for it in items} == {"major", "minor"}
  assert {len(it.options) for it in items} == {4, 5}
  raw = [r for f in mcq.sample_files() for r in json.load(open(f, encoding="utf-8"))]
  assert sum(bool(it.context) for it in items) == sum(bool(r.get("context")) for r in raw) > 0
  assert [it.question for it in items] == [r["question"].strip() for r in raw]


def test_formats_and_key_spellings(tmp_path):
  x = _write(tmp_path, "x.jsonl", [
      {"question": "Q1?", "option": "(A) a\n(B) b\n(C) c\n(D) d\n(E) e", "anwer": "(E)",
       "source": "headqa"},
      {"question": "Q2?", "options": "（A） one\n（B） two\ncontinued\n(C) three\n(D) four",
       "answer": "B", "source": "mmlu-medical-sw", "context": "An abstract."},
      {"question": "Q3?", "options": "(A) a\n(B) b\n(C) c\n(D) d", "answer": "(A)",
       "source": "MMLU_anatomy_de"},
  ], jsonl=True)
  m = _write(tmp_path, "French.jsonl", [
      {"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"},
       "answer_idx": "D", "rationale": "..."},
      {"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "A,C"},
  ], jsonl=True)
  items, report = mcq.load([x, m])
  a, b, c, d = items
  assert (a.lang, a.cls, a.answer, a.letters, a.source) == ("es", "major", "E", "ABCDE", "headqa")
  assert (b.lang, b.cls, b.answer, b.context) == ("sw", "minor", "B", "An abstract.")
  assert b.options[1] == ("B", "two\ncontinued")
  assert c.lang == "de"
  assert (d.lang, d.source, d.answer, d.letters) == ("fr", "mmedbench-fr", "D", "ABCDE")
  assert report.skipped == {"multi-answer": 1}


def test_bad_input_errors_name_file_and_item(tmp_path):
  ok = {"question": "Q?", "options": "(A) a\n(B) b", "answer": "(A)", "source": "s", "lang": "en"}
  bad_answer = dict(ok, answer="(C)")
  f = _write(tmp_path, "bad.json", [ok, bad_answer])
  with pytest.raises(mcq.MCQFormatError, match=r"bad.json: item 1: answer 'C' is not among its options AB"):
    mcq.load_file(f)
  report = mcq.LoadReport()
  assert len(mcq.load_file(f, on_bad="skip", report=report)) == 1
  assert report.skipped == {"bad item": 1} and "item 1" in report.problems[0]

  empty = tmp_path / "empty.json"
  empty.write_text("  \n")
  with pytest.raises(mcq.MCQFormatError, match="empty.json: empty file"):
    mcq.load_file(str(empty))
  with pytest.raises(mcq.MCQFormatError, match="empty.json: empty file"):
    mcq.load_file(_write(tmp_path, "empty.json", []))

  unknown = _write(tmp_path, "squad.jsonl", [{"context": "c", "question": "q", "answers": ["x"]}], jsonl=True)
  with pytest.raises(mcq.MCQFormatError, match=r"squad.jsonl: item 0: not a known multiple-choice format"):
    mcq.load_file(unknown, on_bad="skip")  # an unknown format is never skipped

  notjson = tmp_path / "notes.txt"
  notjson.write_text("hello\n")
  with pytest.raises(mcq.MCQFormatError, match=r"notes.txt:1: not JSON Lines"):
    mcq.load_file(str(notjson))

  nolang = _write(tmp_path, "nolang.json", [dict(ok, source="mystery-bench", lang=None)])
  with pytest.raises(mcq.MCQFormatError, match="source 'mystery-bench' has no known language"):
    mcq.load_file(nolang)


def test_prompts_seeded_same_source_never_self_and_char_limit():
  tok = load_tokenizer("sample")
  items, _ = mcq.load(mcq.sample_files())
  p1 = mcq.build_prompts(items, shots=3, seed=0, max_chars=4096, eos_text="</s>")
  p2 = mcq.build_prompts(items, shots=3, seed=0, max_chars=4096, eos_text="</s>")
  p3 = mcq.build_prompts(items, shots=3, seed=1, max_chars=4096, eos_text="</s>")
  assert p1 == p2 and p1 != p3
  for it, p in zip(items, p1):
    assert p.shots == 3 and len(p.parts) == 4 and p.chars <= 4096
    assert p.parts[-1].endswith("Assistant:") and it.question in p.parts[-1]
    # Exemplars come from the same source (its other items), never the item itself.
    same = [o for o in items if o.source == it.source and o is not it]
    for part in p.parts[:-1]:
      assert it.question not in part
      assert any(o.question in part for o in same)
  en = items[0]
  assert p1[0].parts[-1].startswith("\nUser:You are a medical doctor answering real-world medical "
                                    "exam questions. Select one correct answer from A to D.\n")
  assert "Assistant:The correct answer is (" in p1[0].parts[0]
  # Token ids: BOS, then the parts joined by EOS.
  ids = mcq.prompt_ids(p1[0], tok)
  assert ids[0] == tok.bos_id and ids.count(tok.eos_id) == 3
  # Over the limit, exemplars are dropped from the end; below the bare question the item is
  # skipped (the exemplar draws do not depend on the limit).
  question = p1[0].parts[-1][1:]
  one_shot = len(p1[0].parts[0]) + 4 + 1 + len(question)
  tight = mcq.build_prompts(items, shots=3, seed=0, max_chars=one_shot, eos_text="</s>")
  assert tight[0].shots == 1 and tight[0].parts == (p1[0].parts[0], "\n" + question)
  assert tight[0].chars == one_shot
  none = mcq.build_prompts(items, shots=3, seed=0, max_chars=len(question) - 1, eos_text="</s>")
  assert none[0] is None
  # Chinese items get the Chinese template; a minor language without one gets English.
  zh = next(i for i, it in enumerate(items) if it.lang == "zh")
  sw = next(i for i, it in enumerate(items) if it.lang == "sw")
  assert p1[zh].template_lang == "zh" and "问题: " in p1[zh].parts[-1]
  assert p1[sw].template_lang == "en"


def test_loglikelihood_acc_and_acc_norm_and_averages():
  items, _ = mcq.load(mcq.sample_files(), max_per_source=1)
  it = next(i for i in items if i.lang == "en")
  reqs = mcq.loglikelihood_requests(it)
  assert reqs[0][0].endswith("\nAnswer:") and reqs[0][1] == " " + it.options[0][1]
  letter_reqs = mcq.loglikelihood_requests(it, "letter")
  assert [c for _, c in letter_reqs] == [" A", " B", " C", " D"]

  # Rigged scores: option A -0.6 per character, option B -5 in all, the rest -50. Long A texts
  # lose on the sum (acc picks B) but win per character (acc_norm picks A).
  table = {}
  for item in items:
    for k, (ctx, cont) in enumerate(mcq.loglikelihood_requests(item)):
      table[ctx, cont] = {0: -0.6 * len(cont.strip()), 1: -5.0}.get(k, -50.0)
  recs = mcq.score_loglikelihood(items, lambda reqs: [(table[c, x], False) for c, x, _ in reqs])
  for r, item in zip(recs, items):
    a_len, b_len = len(item.options[0][1]), len(item.options[1][1])
    assert r["pred"] == ("A" if -0.6 * a_len > -5.0 else "B")
    assert r["pred_norm"] == ("A" if -0.6 > -5.0 / b_len else "B")
    assert r["correct"] == (r["pred"] == item.answer)
  assert any(r["pred"] != r["pred_norm"] for r in recs)
  s = mcq.summarize(recs, "correct")
  assert s["items"] == 16 and s["major_languages"] == 12 and s["minor_languages"] == 4
  for lang, v in s["per_language"].items():
    assert v["acc"] == sum(r["correct"] for r in recs if r["lang"] == lang) / v["n"]
  majors = [v["acc"] for v in s["per_language"].values() if v["class"] == "major"]
  assert s["major_average"] == pytest.approx(sum(majors) / 12)


def test_summarize_excludes_pubmedqa_from_averages_and_counts_skips():
  recs = [{"source": "pubmedqa", "lang": "en", "class": "major", "correct": True},
          {"source": "medqa-usmle", "lang": "en", "class": "major", "correct": False},
          {"source": "medqa-usmle", "lang": "en", "class": "major", "skipped": True},
          {"source": "headqa", "lang": "es", "class": "major", "correct": True}]
  s = mcq.summarize(recs)
  assert s["per_source"]["pubmedqa"]["acc"] == 1.0
  assert s["per_language"]["en"]["acc"] == 0.0 and s["per_language"]["en"]["sources"] == ["medqa-usmle"]
  assert s["major_average"] == 0.5 and s["minor_average"] is None
  assert s["skipped"] == 1 and s["per_source"]["medqa-usmle"]["skipped"] == 1
