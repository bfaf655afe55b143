"""A sentencepiece BPE model as a Hugging Face tokenizer directory (`tokenizer.json` +
`tokenizer_config.json`) that `transformers.AutoTokenizer` loads with no custom code.

Written by `python -m medmoe_jax.hf export` for models trained with a sentencepiece tokenizer
(the sample one included), so the exported model encodes text exactly as training did.

The conversion is the one transformers applies to byte-fallback sentencepiece BPE models (its
LlamaConverter), for our training options (identity normalisation, no dummy prefix):
  model       BPE over the same pieces and ids, byte fallback; merges from the pieces' scores
              (a piece's score is its merge priority in sentencepiece's BPE)
  normalizer  " " -> "▁" (sentencepiece escapes whitespace that way)
  decoder     "▁" -> " ", byte pieces <0xNN> back to bytes, pieces joined
  specials    <pad> <unk> <s> </s> as special tokens; <s> is added before each text
              (`tokenizer("Hello")` gives the ids our pipeline and generator see: BOS + text)
Tested: the same ids as sentencepiece over the multilingual sample corpus, and the same text back.
"""
from __future__ import annotations

import json
import os

from sentencepiece import sentencepiece_model_pb2

# sentencepiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Jinja chat templates for our config.data.chat_template formats (medmoe_jax/data/chat.py):
# turns joined by "\n"; apollo names the roles and ends an assistant turn with EOS.
CHAT_TEMPLATES = {
    "apollo": ("{{ bos_token }}{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
               "{% if m['role'] == 'assistant' %}{{ 'Assistant:' + m['content'] + eos_token }}"
               "{% else %}{{ 'User:' + m['content'] }}{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}{{ '\\nAssistant:' }}{% endif %}"),
    "plain": ("{{ bos_token }}{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
              "{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}{{ '\\n' }}{% endif %}"),
}
# (Newlines are Jinja string escapes: transformers renders with trim_blocks, which would eat a
# literal newline after a block tag.)


def _merges(pieces) -> list[list[str]]:
  """BPE merges in priority order: for each piece, every split into two pieces of the
  vocabulary, ranked by the merged piece's score (higher first), as transformers'
  SentencePieceExtractor orders them."""
  vocab = {p.piece: i for i, p in enumerate(pieces)}
  merges = []
  for i, p in enumerate(pieces):
    if p.type != _NORMAL and p.type != _USER_DEFINED:
      continue
    local = [(p.piece[:k], p.piece[k:]) for k in range(1, len(p.piece))
             if p.piece[:k] in vocab and p.piece[k:] in vocab]
    local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    merges.extend((p.score, i, left, right) for left, right in local)
  merges.sort(key=lambda m: (-m[0], m[1]))
  return [[left, right] for _, _, left, right in merges]


def sentencepiece_to_tokenizer_json(model_proto: bytes) -> str:
  """tokenizer.json text for a sentencepiece BPE model trained as ours are (byte fallback, no
  dummy prefix, identity normalisation); ValueError for any other kind of model."""
  m = sentencepiece_model_pb2.ModelProto()
  m.ParseFromString(model_proto)
  ts, ns = m.trainer_spec, m.normalizer_spec
  if ts.model_type != 2 or ns.add_dummy_prefix or ns.name not in ("identity", "") \
      or not ts.byte_fallback:
    raise ValueError("only byte-fallback BPE sentencepiece models with identity normalisation "
                     "and no dummy prefix (how medmoe_jax trains them) convert exactly; this one "
                     f"is model_type={ts.model_type}, normalization={ns.name!r}, "
                     f"add_dummy_prefix={ns.add_dummy_prefix}, byte_fallback={ts.byte_fallback}")
  pieces = list(m.pieces)
  specials = [(i, p.piece) for i, p in enumerate(pieces) if p.type in (_CONTROL, _UNKNOWN)]
  unk = next(p.piece for p in pieces if p.type == _UNKNOWN)
  bos = pieces[ts.bos_id].piece
  doc = {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": [{"id": i, "content": piece, "single_word": False, "lstrip": False,
                        "rstrip": False, "normalized": False, "special": True}
                       for i, piece in specials],
      "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
      "pre_tokenizer": None,
      "post_processor": {
          "type": "TemplateProcessing",
          "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}],
          "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": bos, "type_id": 1}},
                   {"Sequence": {"id": "B", "type_id": 1}}],
          "special_tokens": {bos: {"id": bos, "ids": [ts.bos_id], "tokens": [bos]}},
      },
      "decoder": {"type": "Sequence", "decoders": [
          {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
          {"type": "ByteFallback"},
          {"type": "Fuse"}]},
      "model": {
          "type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
          "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
          "ignore_merges": False,
          "vocab": {p.piece: i for i, p in enumerate(pieces)},
          "merges": _merges(pieces),
      },
  }
  return json.dumps(doc, ensure_ascii=False, indent=1)


def write_hf_tokenizer(tokenizer, out_dir: str, chat_template: str | None = None) -> list[str]:
  """Writes `tokenizer` (our sentencepiece `Tokenizer`) to out_dir as tokenizer.json +
  tokenizer_config.json (+ special_tokens_map.json); returns the file names."""
  text = sentencepiece_to_tokenizer_json(tokenizer.model_proto)
  piece = tokenizer.id_to_piece
  special = {"bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id),
             "pad_token": piece(tokenizer.pad_id), "unk_token": piece(tokenizer.unk_id)}
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
            "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30}
  if chat_template:
    config["chat_template"] = chat_template
  os.makedirs(out_dir, exist_ok=True)
  files = {"tokenizer.json": text,
           "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2),
           "special_tokens_map.json": json.dumps(special, ensure_ascii=False, indent=2)}
  for name, body in files.items():
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      f.write(body)
  return sorted(files)
