"""The official Apollo-MoE XMedBench protocol (evaluation/apollo.py) against the official code.

The expected prompt strings below are written from FreedomIntelligence/ApolloMoE's
src/prepare/data_process_test_qwen2.py (its templates and loop), not from our implementation;
`_official_preprocess` is that script's loop, unchanged but for reading records from a list.
"""
import json
import random

import pytest

from medmoe_jax.evaluation import apollo, mcq


def _load(tmp_path, records, name="bench.json"):
  path = tmp_path / name
  path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
  return mcq.load_file(str(path))


PUBMED = {"question": "Do statins reduce mortality?", "context": "A cohort of 200 patients.",
          "options": "(A) yes\n(B) no\n(C) maybe", "answer": "(A)", "source": "pubmedqa"}
USMLE5 = {"question": "Which drug is first line?", "options": "(A) one\n(B) two\n(C) three\n"
          "(D) four\n(E) five", "answer": "(E)", "source": "medqa-usmle"}
CMEXAM = {"question": "高血压的首选药物是？", "options": "(A) 甲\n(B) 乙\n(C) 丙\n(D) 丁",
          "answer": "(B)", "source": "cmexam"}
ARABIC = {"question": "ما هو العضو المسؤول عن ضخ الدم؟", "options": "(A) القلب\n(B) الكبد\n"
          "(C) الرئة\n(D) الكلية", "answer": "(A)", "source": "mmlu-medical-ar"}


def test_zero_shot_prompts_are_the_official_strings_byte_for_byte(tmp_path):
  items = _load(tmp_path, [PUBMED, USMLE5, CMEXAM, ARABIC])
  got = apollo.build_prompts(items, shots=0, seed=0, max_chars=4096, eos_text="<|endoftext|>")
  expected = [
      # question_prompt_en_pubmed: no letter range, "Context: ... " with a trailing space.
      "User:You are a medical doctor answering real-world medical exam questions.\n"
      "Context: A cohort of 200 patients. \n"
      "Question: Do statins reduce mortality?\n"
      "Options:\n(A) yes\n(B) no\n(C) maybe\n"
      "Assistant:",
      # question_prompt_en_choice: "from A to D" although the item has five options.
      "User:You are a medical doctor answering real-world medical exam questions. Select one "
      "correct answer from A to D.\n"
      "Question: Which drug is first line?\n"
      "Options:\n(A) one\n(B) two\n(C) three\n(D) four\n(E) five\n"
      "Assistant:",
      # question_prompt_zh_choice: "A到E" although the item has four options.
      "User:您是一名医生，正在回答现实世界的医学考试问题。请从A到E中选择一个正确答案。\n"
      "问题: 高血压的首选药物是？\n"
      "选项:\n(A) 甲\n(B) 乙\n(C) 丙\n(D) 丁\n"
      "Assistant:",
      "User:أنت طبيب يجيب على أسئلة الفحص الطبي في العالم الحقيقي. الرجاء اختيار الإجابة "
      "الصحيحة من أ إلى د.\n"
      "سؤال: ما هو العضو المسؤول عن ضخ الدم؟\n"
      "خيارات:\n(A) القلب\n(B) الكبد\n(C) الرئة\n(D) الكلية\n"
      "Assistant:",
  ]
  assert [p.text for p in got] == expected
  assert [p.template_lang for p in got] == ["en", "en", "zh", "ar"]
  assert all(p.shots == 0 and p.chars == len(p.text) for p in got)


def test_one_shot_exemplars_are_the_official_strings(tmp_path):
  """Two items per source and one shot: each item's exemplar is the other item."""
  pubmed2 = dict(PUBMED, question="Is aspirin useful?", context="Trial data.", answer="(B)")
  ar2 = dict(ARABIC, question="ما هو أكبر عضو؟", answer="(D)")
  items = _load(tmp_path, [PUBMED, pubmed2, ARABIC, ar2])
  got = apollo.build_prompts(items, shots=1, seed=3, max_chars=4096, eos_text="<|endoftext|>")
  # question_prompt_en_pubmed_shot has "questions. " (a space before the newline) where the
  # question template has none.
  assert got[0].text == (
      "User:You are a medical doctor answering real-world medical exam questions. \n"
      "Context: Trial data. \n"
      "Question: Is aspirin useful?\n"
      "Options:\n(A) yes\n(B) no\n(C) maybe\n"
      "Assistant:The correct answer is (B).<|endoftext|>\n"
      "User:You are a medical doctor answering real-world medical exam questions.\n"
      "Context: A cohort of 200 patients. \n"
      "Question: Do statins reduce mortality?\n"
      "Options:\n(A) yes\n(B) no\n(C) maybe\n"
      "Assistant:")
  # The Arabic answer sentence is written after the letter.
  assert got[2].text.startswith(
      "User:أنت طبيب يجيب على أسئلة الفحص الطبي في العالم الحقيقي. الرجاء اختيار الإجابة "
      "الصحيحة من أ إلى د.\nسؤال: ما هو أكبر عضو؟\n")
  assert "\nAssistant:(D)الإجابة الصحيحة هي.<|endoftext|>\nUser:" in got[2].text
  assert got[2].text.endswith("سؤال: ما هو العضو المسؤول عن ضخ الدم؟\n"
                              "خيارات:\n(A) القلب\n(B) الكبد\n(C) الرئة\n(D) الكلية\nAssistant:")
  assert got[0].exemplars == (items[1].where,) and got[1].exemplars == (items[0].where,)


def test_unlisted_sources_and_the_50_language_mode_use_english(tmp_path):
  sw = {"question": "Swali?", "options": "(A) a\n(B) b", "answer": "(A)", "source": "mmlu-medical-sw"}
  items = _load(tmp_path, [sw, PUBMED, CMEXAM, dict(CMEXAM, source="KORMEDMCQA")])
  one = apollo.build_prompts(items, shots=0, seed=0, max_chars=4096, eos_text="<|endoftext|>")
  assert one[0].text.startswith("User:You are a medical doctor answering real-world medical exam "
                                "questions. Select one correct answer from A to D.\nQuestion: Swali?")
  assert one[3].template_lang == "ko"  # source names match ignoring case
  fifty = apollo.build_prompts(items, shots=0, seed=0, max_chars=4096,
                               eos_text="<|endoftext|>", protocol="apollo50")
  english = ("User:You are a medical doctor answering real-world medical exam questions. "
             "Select one correct answer from A to D.\nQuestion: ")
  assert all(p.text.startswith(english) and p.template_lang == "en" for p in fifty)
  assert "Context:" not in fifty[1].text  # the 50-language template has no context line


def _official_preprocess(data, few_shot):
  """src/prepare/data_process_test_qwen2.py's preprocess(), its loop unchanged (templates from
  the verbatim copies in evaluation/apollo.py); records in, the output records out."""
  t = apollo
  data_final = []
  grouped_items = {}
  for item in data:
    source = item.get("source")
    if source not in grouped_items:
      grouped_items[source] = []
    grouped_items[source].append(item)
  for source, items in grouped_items.items():
    if source in ['cmb-single', 'cmexam', 'cmmlu-medical', 'medqa-mcmle']:
      few_shot_prompt = t.question_prompt_zh_choice_shot
      question_prompt = t.question_prompt_zh_choice
    elif source in ['medmcqa', 'medqa-usmle', 'mmlu-medical']:
      few_shot_prompt = t.question_prompt_en_choice_shot
      question_prompt = t.question_prompt_en_choice
    elif source in ['mmlu-medical-ar']:
      few_shot_prompt = t.question_prompt_ar_choice_shot
      question_prompt = t.question_prompt_ar_choice
    elif source in ['MedExpQA', 'mmlu-medical-it']:
      few_shot_prompt = t.question_prompt_it_choice_shot
      question_prompt = t.question_prompt_it_choice
    else:
      few_shot_prompt = t.question_prompt_en_pubmed_shot
      question_prompt = t.question_prompt_en_pubmed
    for item in items:
      random_samples = random.sample(items, few_shot + 1)
      question = ''
      tmp_dict = {}
      if item in random_samples:
        random_samples.remove(item)
      else:
        random_samples = random_samples[:-1]
      real_question = question_prompt.format(**item)
      real_question_len = len(real_question)
      for sample in random_samples:
        sample = few_shot_prompt.format(**sample)
        if len(question) + real_question_len + len(sample) < 4096:
          question += sample
      question += real_question
      if len(question) > 4096:
        continue
      tmp_dict['source_question'] = item['question']
      tmp_dict['question'] = question
      tmp_dict['answer'] = item['answer'][1]
      tmp_dict['source'] = item['source']
      data_final.append(tmp_dict)
  return data_final


def _bench(seed):
  """Items of five sources, lengths spread so that the 4096-character limit drops some
  exemplars (later, shorter ones still get in) and skips a few items; one duplicated record."""
  r = random.Random(seed)
  out = []
  for k in range(60):
    source = ["medqa-usmle", "cmexam", "mmlu-medical-ar", "MedExpQA", "pubmedqa"][k % 5]
    n = r.choice([40, 300, 900, 1500, 2200, 4200]) if k % 7 else 3000
    rec = {"question": f"q{k} " + "x" * n, "options": "(A) a\n(B) b\n(C) c\n(D) d",
           "answer": f"({'ABCD'[k % 4]})", "source": source}
    if source == "pubmedqa":
      rec["context"] = "ctx " * r.randint(1, 300)
    out.append(rec)
  out.append(dict(out[0]))  # a duplicate: `item in random_samples` compares by value
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exemplar_draws_and_limit_equal_the_official_loop(tmp_path, seed):
  data = _bench(seed)
  items = _load(tmp_path, data)
  random.seed(seed)
  official = _official_preprocess(data, 3)
  ours = apollo.build_prompts(items, shots=3, seed=seed, max_chars=4096, eos_text="<|endoftext|>")
  got = []
  for source in dict.fromkeys(it.source for it in items):  # grouped like the official output
    got += [(it.question[:4], p.text) for it, p in zip(items, ours) if it.source == source and p]
  assert got == [(d["source_question"][:4], d["question"]) for d in official]
  assert any(p is None for p in ours)                     # items over the limit are skipped
  assert any(p is not None and 0 < p.shots < 3 for p in ours)  # exemplars dropped by length
  assert all(p is None or p.chars <= 4096 for p in ours)


def test_prompt_ids_eos_token_and_bos_only_where_the_tokenizer_has_one(tmp_path):
  from medmoe_jax.data.tokenizer import load_tokenizer
  items = _load(tmp_path, [ARABIC, dict(ARABIC, question="ما هو أكبر عضو؟")])
  sp = load_tokenizer("sample")
  eos_text = sp.id_to_piece(sp.eos_id)
  p = apollo.build_prompts(items, shots=1, seed=0, max_chars=4096, eos_text=eos_text)[0]
  first, second = p.text.split(eos_text)
  ids = apollo.prompt_ids(p, sp, eos_text)
  assert ids == [sp.bos_id] + sp.encode(first) + [sp.eos_id] + sp.encode(second)

  class NoBos:  # Qwen2's: no BOS token (HFTokenizer.has_bos is False)
    has_bos, bos_id, eos_id = False, 7, 3
    encode = staticmethod(sp.encode)
  ids = apollo.prompt_ids(p, NoBos(), eos_text)
  assert ids == sp.encode(first) + [3] + sp.encode(second)


def _recs(source, lang, cls, right, total):
  return [{"source": source, "lang": lang, "class": cls, "correct": i < right}
          for i in range(total)]


def test_averages_are_the_official_collection_scripts():
  recs = (_recs("medqa-usmle", "en", "major", 1, 2) + _recs("pubmedqa", "en", "major", 3, 3)
          + _recs("mmlu-medical", "en", "major", 0, 4) + _recs("medmcqa", "en", "major", 1, 4)
          + _recs("MMLU_anatomy_de", "de", "major", 1, 1) + _recs("MMLU_college_medicine_de", "de", "major", 0, 3)
          + _recs("MMLU_anatomy_pt", "pt", "major", 2, 2)
          + _recs("MMLU_college_medicine_pt", "pt", "major", 0, 6)
          + _recs("headqa", "es", "major", 1, 4)
          + _recs("mmlu-medical-sw", "sw", "minor", 1, 2))
  s = apollo.summarize(recs)
  lang = s["per_language"]
  # average-en: the unweighted mean of the four sources, pubmedqa included.
  assert lang["en"]["acc"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.25) / 4)
  assert lang["en"]["averaging"] == "unweighted"
  # weighted-average-de: items pooled.
  assert lang["de"]["acc"] == pytest.approx(1 / 4) and lang["de"]["averaging"] == "weighted"
  # The official Portuguese list leaves MMLU_college_medicine_pt out.
  assert lang["pt"]["acc"] == 1.0 and s["per_source"]["MMLU_college_medicine_pt"]["acc"] == 0.0
  assert lang["es"]["acc"] == 0.25
  assert s["major_average"] == pytest.approx(((0.5 + 1.0 + 0.0 + 0.25) / 4 + 0.25 + 1.0 + 0.25) / 4)
  assert s["minor_average"] == 0.5 and s["minor_languages"] == 1
  # The translated protocol keeps its own averages (pubmedqa out, items pooled).
  t = mcq.summarize_protocol(recs, "correct", "translated")
  assert t["per_language"]["en"]["acc"] == pytest.approx(2 / 10)
