"""Chat templates: how a supervised record (question/answer or chat turns) becomes training text.

  "apollo" (default)  the official Apollo-MoE format (src/prepare/data_process_train_prodata_
                      qwen2.py): `User:{question}\nAssistant:{answer}` and EOS, turn after turn
                      joined by "\n". Tokenized as the official code does: one segment per turn
                      ("User:q", "\nAssistant:a", "\nUser:q2", ...), each encoded whole, the first
                      len(encode("\nAssistant:")) tokens of an assistant segment and every token of
                      a user segment masked from the loss, except that the first token of a user
                      segment after an assistant one is labelled EOS (its input stays "\n"): the
                      model learns to end each answer, as the official labels teach it. Prompt
                      turns of any role (system, user) are "User:" turns.
  "plain"             turn texts joined by "\n", no role names; prompt turns masked (this
                      project's earlier format).
  "hf"                the Hugging Face model's own `chat_template` (Jinja, from the
                      tokenizer_config.json beside config.data.tokenizer); the target of an
                      assistant turn is what the template adds for it after the generation
                      prompt (its content and end-of-turn tokens), everything else is masked.

Rendered.eos_labels names those user segments; the pipeline gives their first token the target
EOS (the batch's `targets`, data/pipeline.py), so multi-turn records are labelled token for token
as the official `SFT_data.preprocess` labels them.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

from medmoe_jax import urls

TEMPLATES = ("apollo", "plain", "hf")
APOLLO_ROLES = ("User:", "Assistant:")
APOLLO_SEP = "\n"


@dataclasses.dataclass(frozen=True)
class Rendered:
  text: str
  prompt_spans: tuple[tuple[int, int], ...]
  # True: every span start opens a segment encoded whole, whose span-prefix tokens are masked
  # (apollo); False: spans and the rest are encoded piece by piece (plain, hf).
  segmented: bool = False
  # Indices into prompt_spans of the segments whose first token is labelled EOS (apollo: each
  # user turn after an assistant turn, as the official preprocessing labels it).
  eos_labels: tuple[int, ...] = ()


def _merge(spans: list[tuple[int, int]], start: int, end: int):
  if spans and spans[-1][1] == start:
    spans[-1] = (spans[-1][0], end)
  else:
    spans.append((start, end))


def render_plain(turns) -> Rendered:
  """[(content, is_prompt)] -> text joined by "\\n" (each separator belongs to the piece before)."""
  parts, spans, pos = [], [], 0
  for i, (content, is_prompt) in enumerate(turns):
    piece = content + ("\n" if i < len(turns) - 1 else "")
    if is_prompt:
      _merge(spans, pos, pos + len(piece))
    parts.append(piece)
    pos += len(piece)
  return Rendered("".join(parts), tuple(spans))


def render_apollo(turns) -> Rendered:
  """The official `SFT_data.preprocess` segments: "User:q", "\\nAssistant:a", "\\nUser:q2", ..."""
  parts, spans, eos_labels, pos = [], [], [], 0
  for k, (content, is_prompt) in enumerate(turns):
    sep = APOLLO_SEP if pos else ""
    role = APOLLO_ROLES[0] if is_prompt else APOLLO_ROLES[1]
    segment = sep + role + content
    if is_prompt and k and not turns[k - 1][1]:
      eos_labels.append(len(spans))  # official: labels += [eos] + [ignore] * (len - 1)
    spans.append((pos, pos + (len(segment) if is_prompt else len(sep + role))))
    parts.append(segment)
    pos += len(segment)
  return Rendered("".join(parts), tuple(spans), segmented=True, eos_labels=tuple(eos_labels))


def hf_chat_template(tokenizer_spec: str) -> tuple[str, dict]:
  """(Jinja chat_template, {bos_token, eos_token}) of the HF model directory (or tokenizer.json's
  directory) named by config.data.tokenizer; ValueError when there is none."""
  try:  # a URL (gs://...): its tokenizer_config.json copied to the local cache
    path = pathlib.Path(urls.local_path(tokenizer_spec or "", "tokenizers",
                                        ("tokenizer_config.json",)))
  except FileNotFoundError as e:
    raise ValueError(f"config.data.chat_template='hf': {e}; use 'apollo' or 'plain', or point "
                     "config.data.tokenizer at an HF model directory with one") from None
  d = path if path.is_dir() else path.parent
  cfg = d / "tokenizer_config.json"
  template, special = None, {}
  if cfg.is_file():
    tc = json.loads(cfg.read_text(encoding="utf-8"))
    template = tc.get("chat_template")
    for k in ("bos_token", "eos_token"):
      v = tc.get(k)
      special[k] = (v.get("content") if isinstance(v, dict) else v) or ""
  if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
    template = next((t.get("template") for t in template if t.get("name") == "default"), None)
  if not isinstance(template, str) or not template:
    raise ValueError(f"config.data.chat_template='hf': {cfg} has no chat_template; use 'apollo' "
                     "or 'plain', or point config.data.tokenizer at an HF model directory with one")
  return template, special


def render_hf(turns, template: str, special: dict | None = None) -> Rendered:
  """Turns through a Jinja chat template; the targets are each assistant turn's addition."""
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import sandbox  # pylint: disable=g-import-not-at-top

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.globals["raise_exception"] = _raise
  compiled = env.from_string(template)
  special = dict(special or {})

  def render(msgs, gen):
    try:
      return compiled.render(messages=msgs, add_generation_prompt=gen, **special)
    except jinja2.TemplateError as e:
      raise ValueError(f"chat template: {e}") from None

  msgs = [{"role": "user" if p else "assistant", "content": c} for c, p in turns]
  text = render(msgs, False)
  targets = []
  for i, m in enumerate(msgs):
    if m["role"] == "assistant":
      start, end = len(render(msgs[:i], True)), len(render(msgs[: i + 1], False))
      if text[:end] != render(msgs[: i + 1], False) or end < start:
        raise ValueError("chat template: a conversation's rendering is not a prefix of the next "
                         "one's; it cannot mark the assistant turns")
      targets.append((start, end))
  spans, pos = [], 0
  for start, end in targets:
    if start > pos:
      spans.append((pos, start))
    pos = end
  if pos < len(text):
    spans.append((pos, len(text)))
  return Rendered(text, tuple(spans))


def _raise(message):
  raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """name in TEMPLATES; jinja, special: the HF template text and its bos/eos token strings."""
  name: str = "apollo"
  jinja: str = ""
  special: tuple[tuple[str, str], ...] = ()

  def render(self, turns) -> Rendered:
    if self.name == "apollo":
      return render_apollo(turns)
    if self.name == "plain":
      return render_plain(turns)
    if self.name == "hf":
      return render_hf(turns, self.jinja, dict(self.special))
    raise ValueError(f"chat template {self.name!r}; use one of {', '.join(TEMPLATES)}")

  @property
  def key(self) -> str:
    """What a built source's fingerprint records."""
    return self.name if self.name != "hf" else json.dumps(["hf", self.jinja, self.special])


def from_config(c) -> ChatTemplate:
  return template(c.data.get("chat_template", "apollo"), c.data.tokenizer)


def template(name: str, tokenizer: str) -> ChatTemplate:
  """The chat template `name` (config.data.chat_template); "hf" reads the tokenizer directory's
  own (config.data.tokenizer)."""
  if name not in TEMPLATES:
    raise ValueError(f"config.data.chat_template: {name!r}; use one of {', '.join(TEMPLATES)}")
  if name != "hf":
    return ChatTemplate(name)
  jinja, special = hf_chat_template(tokenizer)
  return ChatTemplate(name, jinja, tuple(sorted(special.items())))
