"""The official XMedBench protocol of Apollo-MoE (FreedomIntelligence/ApolloMoE), reproduced.

Prompts are built as `src/prepare/data_process_test_qwen2.py` builds them (the 12 major
languages; `protocol="apollo"`) or as `data_process_test_qwen2_50languages.py` /
`data_process_test_qwen_minor.py` do (the English template for every source; `"apollo50"`):

- the template is chosen by the item's *source*, with the official list of source names (matched
  ignoring case); a source not listed gets the English template with a `Context:` line
  (`question_prompt_en_pubmed`, as the official code does) when the item has a `context` field,
  else the plain English template (what the official minor-language script uses; the official
  major-language script would stop with a KeyError there);
- the templates below are the official strings byte for byte, hard-coded letter ranges ("A to D"
  for a 5-option English item, "A到E" for a 4-option Chinese one), the Arabic answer sentence
  written after the letter and the missing spaces ("La risposta corretta è(B)") included; the
  official `<|endoftext|>` is the tokenizer's end-of-text token text (it is Qwen2's);
- exemplars: `random.sample(items_of_source, shots + 1)`, the item itself removed if drawn, else
  the last draw dropped; then, in order, each exemplar is added only while
  `len(prompt so far) + len(question) + len(exemplar) < max_chars`, and an item whose prompt is
  still over `max_chars` is skipped. The draws come from one `random.Random(seed)` over the
  sources in order of first appearance, so they are those of the official script run after
  `random.seed(seed)` on the same file (the official script itself is unseeded);
- the prompt string is tokenized like Hugging Face's tokenizer call: the end-of-text text is the
  special token, and a BOS token is added only by tokenizers that have one (Qwen2's has none).

Averages are `utils/results_collection_major.py`'s: English and Chinese are the unweighted means
of their four sources (pubmedqa, cmb-single and cmexam included), German, Portuguese, French and
Italian pool their sources' items (weighted); a single-source language is that source. The official
Portuguese list names MMLU_medical_genetics_pt twice and omits MMLU_college_medicine_pt, so that
source is reported but left out of the Portuguese average, as in the paper's numbers. Languages the
official code does not list pool their sources; the major and minor means are unweighted means
over languages (the papers' "Avg.").
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from medmoe_jax.evaluation import accuracy

# --- The official templates, copied verbatim from src/prepare/data_process_test_qwen2.py.
# pylint: disable=line-too-long,trailing-whitespace

question_prompt_en_choice_shot = """User:You are a medical doctor answering real-world medical exam questions. Select one correct answer from A to D.
Question: {question}
Options:
{options}
Assistant:The correct answer is {answer}.<|endoftext|>
"""
question_prompt_en_choice = """User:You are a medical doctor answering real-world medical exam questions. Select one correct answer from A to D.
Question: {question}
Options:
{options}
Assistant:"""

question_prompt_en_pubmed_shot = """User:You are a medical doctor answering real-world medical exam questions. 
Context: {context} 
Question: {question}
Options:
{options}
Assistant:The correct answer is {answer}.<|endoftext|>
"""

question_prompt_en_pubmed = """User:You are a medical doctor answering real-world medical exam questions.
Context: {context} 
Question: {question}
Options:
{options}
Assistant:"""

question_prompt_zh_choice_shot = """User:您是一名医生，正在回答现实世界的医学考试问题。请从A到E中选择一个正确答案。
问题: {question}
选项:
{options}
Assistant:正确答案是{answer}.<|endoftext|>
"""

question_prompt_zh_choice = """User:您是一名医生，正在回答现实世界的医学考试问题。请从A到E中选择一个正确答案。
问题: {question}
选项:
{options}
Assistant:"""

question_prompt_es_choice_shot = """User:Usted es un médico que responde preguntas de exámenes médicos del mundo real. Elija una respuesta correcta de la A a la D.
pregunta: {question}
Opciones:
{options}
Assistant:La respuesta correcta es {answer}.<|endoftext|>
"""
question_prompt_es_choice = """User:Usted es un médico que responde preguntas de exámenes médicos del mundo real. Elija una respuesta correcta de la A a la D.
pregunta: {question}
Opciones:
{options}
Assistant:"""

question_prompt_fr_choice_shot = """User:Vous êtes un médecin et répondez à des questions d'examen médical du monde réel. Veuillez choisir une bonne réponse de A à E.
question: {question}
Possibilités:
{options}
Assistant:La bonne réponse est {answer}.<|endoftext|>
"""
question_prompt_fr_choice = """User:Vous êtes un médecin et répondez à des questions d'examen médical du monde réel. Veuillez choisir une bonne réponse de A à E.
question: {question}
Possibilités:
{options}
Assistant:"""

question_prompt_hi_choice_shot = """User:आप एक डॉक्टर हैं जो वास्तविक दुनिया की मेडिकल परीक्षा के सवालों का जवाब दे रहे हैं। कृपया A से D तक सही उत्तर चुनें।
सवाल: {question}
विकल्प:
{options}
Assistant:सही उत्तर है{answer}.<|endoftext|>
"""
question_prompt_hi_choice = """User:आप एक डॉक्टर हैं जो वास्तविक दुनिया की मेडिकल परीक्षा के सवालों का जवाब दे रहे हैं। कृपया A से D तक सही उत्तर चुनें।
सवाल: {question}
विकल्प:
{options}
Assistant:"""

question_prompt_ar_choice_shot = """User:أنت طبيب يجيب على أسئلة الفحص الطبي في العالم الحقيقي. الرجاء اختيار الإجابة الصحيحة من أ إلى د.
سؤال: {question}
خيارات:
{options}
Assistant:{answer}الإجابة الصحيحة هي.<|endoftext|>
"""
question_prompt_ar_choice = """User:أنت طبيب يجيب على أسئلة الفحص الطبي في العالم الحقيقي. الرجاء اختيار الإجابة الصحيحة من أ إلى د.
سؤال: {question}
خيارات:
{options}
Assistant:"""

question_prompt_ru_choice_shot = """User:Вы врач, отвечающий на реальные вопросы медицинского осмотра. Пожалуйста, выберите правильный ответ от А и B.
вопрос: {question}
Параметры:
{options}
Assistant:Правильный ответ{answer}.<|endoftext|>
"""
question_prompt_ru_choice = """User:Вы врач, отвечающий на реальные вопросы медицинского осмотра. Пожалуйста, выберите правильный ответ от А и B.
вопрос: {question}
Параметры:
{options}
Assistant:"""

question_prompt_de_choice_shot = """User:Sie sind ein Arzt, der Fragen zu medizinischen Untersuchungen aus der Praxis beantwortet. Bitte wählen Sie eine richtige Antwort von A bis D.
Frage: {question}
Optionen:
{options}
Assistant:Die richtige Antwort ist{answer}.<|endoftext|>
"""
question_prompt_de_choice = """User:Sie sind ein Arzt, der Fragen zu medizinischen Untersuchungen aus der Praxis beantwortet. Bitte wählen Sie eine richtige Antwort von A bis D.
Frage: {question}
Optionen:
{options}
Assistant:"""

question_prompt_pt_choice_shot = """User:Você é um médico que responde a perguntas de exames médicos do mundo real. Escolha uma resposta correta de A a D.
pergunta: {question}
Opções:
{options}
Assistant:A resposta correta é{answer}.<|endoftext|>
"""
question_prompt_pt_choice = """User:Você é um médico que responde a perguntas de exames médicos do mundo real. Escolha uma resposta correta de A a D.
pergunta: {question}
Opções:
{options}
Assistant:"""  

question_prompt_it_choice_shot = """User:Sei un medico che risponde a domande sugli esami medici del mondo reale. Scegli una risposta corretta dalla A alla E.
domanda: {question}
Opzioni:
{options}
Assistant:La risposta corretta è{answer}.<|endoftext|>
"""
question_prompt_it_choice = """User:Sei un medico che risponde a domande sugli esami medici del mondo reale. Scegli una risposta corretta dalla A alla E.
domanda: {question}
Opzioni:
{options}
Assistant:"""


question_prompt_ko_choice_shot = """User:당신은 실제 건강 검진 문제에 답하는 의사입니다. A부터 E까지 정답을 선택해주세요.
질문: {question}
옵션:
{options}
Assistant:정답은{answer}.<|endoftext|>
"""
question_prompt_ko_choice = """User:당신은 실제 건강 검진 문제에 답하는 의사입니다. A부터 E까지 정답을 선택해주세요.
질문: {question}
옵션:
{options}
Assistant:"""

question_prompt_ja_choice_shot = """User:あなたは現実世界の健康診断の質問に答える医師です。 正しい答えを A ～ E から選択してください。
質問: {question}
オプション:
{options}
Assistant:正しい答えは、{answer}.<|endoftext|>
"""
question_prompt_ja_choice = """User:あなたは現実世界の健康診断の質問に答える医師です。 正しい答えを A ～ E から選択してください。
質問: {question}
オプション:
{options}
Assistant:"""

# pylint: enable=line-too-long,trailing-whitespace

OFFICIAL_EOS_TEXT = "<|endoftext|>"

# (shot template, question template) per template name.
TEMPLATES: dict[str, tuple[str, str]] = {
    "zh": (question_prompt_zh_choice_shot, question_prompt_zh_choice),
    "en": (question_prompt_en_choice_shot, question_prompt_en_choice),
    "en_pubmed": (question_prompt_en_pubmed_shot, question_prompt_en_pubmed),
    "es": (question_prompt_es_choice_shot, question_prompt_es_choice),
    "fr": (question_prompt_fr_choice_shot, question_prompt_fr_choice),
    "ar": (question_prompt_ar_choice_shot, question_prompt_ar_choice),
    "hi": (question_prompt_hi_choice_shot, question_prompt_hi_choice),
    "ko": (question_prompt_ko_choice_shot, question_prompt_ko_choice),
    "pt": (question_prompt_pt_choice_shot, question_prompt_pt_choice),
    "de": (question_prompt_de_choice_shot, question_prompt_de_choice),
    "ja": (question_prompt_ja_choice_shot, question_prompt_ja_choice),
    "it": (question_prompt_it_choice_shot, question_prompt_it_choice),
    "ru": (question_prompt_ru_choice_shot, question_prompt_ru_choice),
}

# The official if/elif chain over source names.
OFFICIAL_SOURCES: dict[str, tuple[str, ...]] = {
    "zh": ("cmb-single", "cmexam", "cmmlu-medical", "medqa-mcmle"),
    "en": ("medmcqa", "medqa-usmle", "mmlu-medical"),
    "es": ("headqa",),
    "fr": ("frenchmedmcqa", "mmlu-medical-fr"),
    "ar": ("mmlu-medical-ar",),
    "hi": ("mmlu-medical-hi",),
    "ko": ("KorMedMCQA",),
    "pt": ("MMLU_college_medicine_pt", "MMLU_anatomy_pt", "MMLU_clinical_knowledge_pt",
           "MMLU_college_biology_pt", "MMLU_medical_genetics_pt", "MMLU_professional_medicine_pt"),
    "de": ("MMLU_professional_medicine_de", "MMLU_college_medicine_de", "MMLU_college_biology_de",
           "MMLU_medical_genetics_de", "MMLU_clinical_knowledge_de", "MMLU_anatomy_de"),
    "ja": ("IgakuQA",),
    "it": ("MedExpQA", "mmlu-medical-it"),
    "ru": ("RuMedDaNet",),
}
_TEMPLATE_OF_SOURCE = {s.lower(): name for name, srcs in OFFICIAL_SOURCES.items() for s in srcs}

PROTOCOLS = ("apollo", "apollo50")


def template_name(source: str, has_context: bool, protocol: str = "apollo") -> str:
  """The template an item of `source` gets ("en_pubmed": English with a Context line)."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
  if protocol == "apollo":
    name = _TEMPLATE_OF_SOURCE.get(source.strip().lower())
    if name is not None:
      return name
    if has_context:
      return "en_pubmed"
  return "en"


def _fields(item) -> dict[str, str]:
  """The record's fields as the official `str.format(**item)` sees them."""
  return {"question": item.raw_question or item.question,
          "options": item.raw_options or item.options_text,
          "answer": item.raw_answer or f"({item.answer})",
          "context": item.context if item.raw_context is None else item.raw_context}


def _same_record(a, b) -> bool:
  """The official `item in random_samples` compares records by value, not identity."""
  return (a is b) or (_fields(a) == _fields(b) and a.source == b.source)


@dataclasses.dataclass(frozen=True)
class Prompt:
  """The full prompt text (exemplars end `...<eos text>\\n`); chars = len(text) as the official
  limit counts it."""
  text: str
  shots: int
  chars: int
  template_lang: str
  exemplars: tuple[str, ...] = ()  # the exemplars' `where`, in prompt order


def build_prompts(items: Sequence, *, shots: int, seed: int, max_chars: int, eos_text: str,
                  protocol: str = "apollo") -> list[Prompt | None]:
  """One prompt per item, or None where the official loop skips it (over max_chars)."""
  by_source: dict[str, list[int]] = {}
  for i, it in enumerate(items):
    by_source.setdefault(it.source, []).append(i)
  rng = random.Random(seed)
  prompts: list[Prompt | None] = [None] * len(items)
  for source, idx in by_source.items():
    group = [items[i] for i in idx]
    for i in idx:
      item = items[i]
      name = template_name(source, item.raw_context is not None, protocol)
      shot_t, question_t = (t.replace(OFFICIAL_EOS_TEXT, eos_text) for t in TEMPLATES[name])
      draws = rng.sample(group, min(shots + 1, len(group)))
      hit = next((k for k, d in enumerate(draws) if _same_record(d, item)), None)
      if hit is not None:
        del draws[hit]
      else:
        draws = draws[:-1]
      real_question = question_t.format(**_fields(item))
      question, used = "", []
      for sample in draws:
        text = shot_t.format(**_fields(sample))
        if len(question) + len(real_question) + len(text) < max_chars:
          question += text
          used.append(sample.where)
      question += real_question
      if len(question) > max_chars:
        continue
      prompts[i] = Prompt(question, len(used), len(question), name.split("_")[0], tuple(used))
  return prompts


def has_bos(tokenizer) -> bool:
  """Whether Hugging Face's tokenizer call would add a BOS token (Qwen2's adds none)."""
  return bool(getattr(tokenizer, "has_bos", True))


def prompt_ids(prompt: Prompt, tokenizer, eos_text: str) -> list[int]:
  """Token ids of the prompt: the end-of-text text is the EOS token (HF splits added tokens out
  before tokenizing the rest), BOS only where the tokenizer has one."""
  ids = [tokenizer.bos_id] if has_bos(tokenizer) else []
  for k, part in enumerate(prompt.text.split(eos_text)):
    if k:
      ids.append(tokenizer.eos_id)
    if part:
      ids.extend(tokenizer.encode(part))
  return ids


# --- Averages (utils/results_collection_major.py).

UNWEIGHTED_LANGUAGES = ("en", "zh")  # average-en / average-zh: mean of the source accuracies
# Left out of the official Portuguese average (its list repeats MMLU_medical_genetics_pt instead).
LEFT_OUT_OF_AVERAGE = ("MMLU_college_medicine_pt",)


def summarize(records: Sequence[dict], key: str = "correct",
              exclude_from_average: Sequence[str] | None = None) -> dict:
  """Accuracy per source and per language as the official collection script computes them,
  and the unweighted means over major and minor languages. exclude_from_average: sources left out
  of the language averages (None: the official choice, LEFT_OUT_OF_AVERAGE)."""
  return accuracy.summarize(records, key, LEFT_OUT_OF_AVERAGE if exclude_from_average is None
                            else exclude_from_average,
                            unweighted_languages=UNWEIGHTED_LANGUAGES)
