"""Per-language prompt templates for generative multiple choice (the paper's protocol).

One template a language: an instruction naming the letter range, labels for the context, the
question and the options, and the sentence that states the answer in an exemplar. The English
template is the paper's, word for word (reference/evaluation.md); the others are our own
translations of it. A language without a template uses English (the paper prompts its minor
languages in English too; `templates_used` in the results says which template each source got).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Template:
  instruction: str  # "{last}" = the last option letter
  context: str
  question: str
  options: str
  answer: str  # "{answer}" = the gold answer as written in the data, e.g. "(B)"


TEMPLATES: dict[str, Template] = {
    "en": Template(
        "You are a medical doctor answering real-world medical exam questions. "
        "Select one correct answer from A to {last}.",
        "Context", "Question", "Options", "The correct answer is {answer}."),
    "zh": Template(
        "你是一名医生，正在回答真实的医学考试题目。请从A到{last}中选择一个正确答案。",
        "背景", "问题", "选项", "正确答案是{answer}。"),
    "fr": Template(
        "Vous êtes médecin et répondez à des questions d'examens médicaux réels. "
        "Choisissez la bonne réponse parmi A à {last}.",
        "Contexte", "Question", "Options", "La bonne réponse est {answer}."),
    "hi": Template(
        "आप एक चिकित्सक हैं जो वास्तविक चिकित्सा परीक्षा के प्रश्नों के उत्तर दे रहे हैं। "
        "A से {last} में से एक सही उत्तर चुनें।",
        "संदर्भ", "प्रश्न", "विकल्प", "सही उत्तर {answer} है।"),
    "es": Template(
        "Usted es un médico que responde preguntas de exámenes médicos reales. "
        "Elija una respuesta correcta de la A a la {last}.",
        "Contexto", "Pregunta", "Opciones", "La respuesta correcta es {answer}."),
    "ar": Template(
        "أنت طبيب تجيب عن أسئلة امتحانات طبية حقيقية. اختر إجابة صحيحة واحدة من A إلى {last}.",
        "السياق", "السؤال", "الخيارات", "الإجابة الصحيحة هي {answer}."),
    "ru": Template(
        "Вы врач и отвечаете на вопросы реальных медицинских экзаменов. "
        "Выберите один правильный ответ от A до {last}.",
        "Контекст", "Вопрос", "Варианты", "Правильный ответ: {answer}."),
    "ja": Template(
        "あなたは実際の医学試験の問題に答える医師です。Aから{last}の中から正しい答えを一つ選んでください。",
        "背景", "質問", "選択肢", "正しい答えは{answer}です。"),
    "ko": Template(
        "당신은 실제 의학 시험 문제에 답하는 의사입니다. A부터 {last} 중에서 정답을 하나 고르세요.",
        "맥락", "질문", "선택지", "정답은 {answer}입니다."),
    "de": Template(
        "Sie sind Arzt und beantworten Fragen aus echten medizinischen Prüfungen. "
        "Wählen Sie eine richtige Antwort von A bis {last}.",
        "Kontext", "Frage", "Optionen", "Die richtige Antwort ist {answer}."),
    "it": Template(
        "Sei un medico che risponde a domande di veri esami di medicina. "
        "Scegli una risposta corretta dalla A alla {last}.",
        "Contesto", "Domanda", "Opzioni", "La risposta corretta è {answer}."),
    "pt": Template(
        "Você é um médico respondendo a perguntas de exames médicos reais. "
        "Escolha uma resposta correta de A a {last}.",
        "Contexto", "Pergunta", "Opções", "A resposta correta é {answer}."),
}


def template_for(lang: str) -> tuple[str, Template]:
  """(language whose template is used, template): the language's own, else English."""
  if lang in TEMPLATES:
    return lang, TEMPLATES[lang]
  return "en", TEMPLATES["en"]


def render_question(t: Template, *, question: str, options: str, last: str, context: str = "") -> str:
  """The user turn and the assistant prefix, ending `Assistant:` (the model continues)."""
  lines = ["User:" + t.instruction.format(last=last)]
  if context.strip():
    lines.append(f"{t.context}: {context}")
  lines += [f"{t.question}: {question}", f"{t.options}:", options, "Assistant:"]
  return "\n".join(lines)


def render_answer(t: Template, answer: str) -> str:
  return t.answer.format(answer=answer)
