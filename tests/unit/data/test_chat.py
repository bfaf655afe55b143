"""Supervised records in the official Apollo-MoE training format (data/chat.py), tokenized and
masked as the official preprocessing does; the "hf" template from a model's own chat_template."""
import json

import numpy as np
import pytest

from medmoe_jax.data import chat, formats, pipeline, sources
from medmoe_jax.data.tokenizer import load_tokenizer


def _official_preprocess(turns, encode, eos_id, max_seq_len=4096):
  """SFT_data.preprocess of ApolloMoE's src/prepare/data_process_train_prodata_qwen2.py, its body
  unchanged but for `self.` (encode = tokenizer.encode(..., add_special_tokens=False))."""
  ignore_index = -100
  sep = '\n'
  roles = ('User:', 'Assistant:')
  ignore_len = len(encode(sep + roles[1]))
  input_ids = []
  labels = []
  for ind, d in enumerate(turns):
    if ind % 2 == 1:
      value_ids = encode(sep + roles[1] + d)
      input_ids += value_ids
      labels += [ignore_index] * ignore_len + value_ids[ignore_len:]
      if len(labels) >= max_seq_len:
        break
    else:
      pre_str = sep if len(input_ids) > 0 else ''
      value_ids = encode(pre_str + roles[0] + d)
      input_ids += value_ids
      if len(labels) > 0:
        labels += [eos_id] + [ignore_index] * (len(value_ids) - 1)
      else:
        labels += [ignore_index] * len(value_ids)
  input_ids.append(eos_id)
  labels.append(eos_id)
  return input_ids, labels


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer("sample")


def _tokenized(tmp_path, tok, records, template=chat.ChatTemplate()):
  f = tmp_path / "sft.jsonl"
  f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
  built = sources.build_source(sources.SourceSpec("sft", (str(f),)), tmp_path / "out",
                               validation_every=0, template=template)
  split = built["train"]
  return pipeline._ReadTokenize(split, tok, {"en": 0})(list(range(len(split))))


def test_apollo_render_is_the_official_text():
  r = formats.to_record({"question": "Dose?", "answer": "500 mg."})
  assert r.text == "User:Dose?\nAssistant:500 mg." and r.segmented
  assert [r.text[a:b] for a, b in r.prompt_spans] == ["User:Dose?", "\nAssistant:"]
  m = formats.to_record({"messages": [{"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Hello."},
                                      {"role": "user", "content": "Fever?"},
                                      {"role": "assistant", "content": "Rest."}]})
  assert m.text == "User:Hi\nAssistant:Hello.\nUser:Fever?\nAssistant:Rest."


def test_tokens_and_loss_mask_equal_the_official_preprocessing(tmp_path, tok):
  qa = {"question": "Which drug treats malaria?", "answer": "Artemisinin, 3 days.", "lang": "en"}
  conv = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                       {"role": "user", "content": "Fever?"}, {"role": "assistant", "content": "Rest."}],
          "lang": "en"}
  got = _tokenized(tmp_path, tok, [qa, conv])
  for rec, turns in zip(got, (["Which drug treats malaria?", "Artemisinin, 3 days."],
                              ["Hi", "Hello.", "Fever?", "Rest."])):
    ids, labels = _official_preprocess(turns, tok.encode, tok.eos_id)
    # Our rows start with BOS (masked); the rest are the official input ids.
    assert rec["tokens"][0] == tok.bos_id and rec["loss_mask"][0] == 0
    assert rec["tokens"][1:].tolist() == ids
    # Targets: loss_mask[t] marks token t as a target; the official label of position t is
    # token t (HF shifts). Equal everywhere except where the official code labels the first
    # token of a later "\nUser:" turn with EOS (our target there would be that token: masked).
    official = [l != -100 for l in labels]
    eos_at_user = [i for i, (l, t) in enumerate(zip(labels, ids)) if l == tok.eos_id and t != l]
    ours = rec["loss_mask"][1:].astype(bool).tolist()
    assert [o for i, o in enumerate(official) if i not in eos_at_user] == \
           [o for i, o in enumerate(ours) if i not in eos_at_user]
    assert all(not ours[i] for i in eos_at_user)
    assert len(eos_at_user) == len(turns) // 2 - 1
  # The single-turn record: the targets are exactly the answer and EOS.
  qa_rec = got[0]
  target = qa_rec["tokens"][qa_rec["loss_mask"] == 1]
  assert target[-1] == tok.eos_id
  assert tok.decode(target[:-1]) == "Artemisinin, 3 days."
  assert tok.decode(qa_rec["tokens"][qa_rec["loss_mask"] == 0]) == "User:Which drug treats malaria?\nAssistant:"


def test_segment_prefix_is_masked_by_its_token_count():
  """A tokenizer that merges across the "Assistant:" boundary: the official rule masks the
  first len(encode("\\nAssistant:")) tokens of the segment, whatever they hold."""

  class Merging:  # one token per character, but ":A" is a single token
    bos_id, eos_id = 1, 2

    def encode_batch(self, texts):
      out = []
      for t in texts:
        ids, i = [], 0
        while i < len(t):
          if t[i:i + 2] == ":A":
            ids.append(1000)
            i += 2
          else:
            ids.append(3 + ord(t[i]) % 900)
            i += 1
        out.append(ids)
      return out

  r = formats.to_record({"question": "Q", "answer": "Ab"})
  src = [{"text": r.text, "lang": "en", "prompt_spans": {"segments": [list(s) for s in r.prompt_spans]}}]
  (rec,) = pipeline._ReadTokenize(src, Merging(), {"en": 0})([0])
  # "User:Q" -> 6 tokens masked; "\nAssistant:Ab" -> "\n" "A".."t" ":A" "b": 11 tokens, of which
  # len(encode("\nAssistant:")) = 11 masked; "b" and EOS are the targets.
  assert rec["loss_mask"].tolist() == [0] + [0] * 6 + [0] * 11 + [1, 1]


def test_hf_chat_template_masks_all_but_the_assistant_turns(tmp_path):
  template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template,
                                                              "eos_token": "<|im_end|>"}))
  from ml_collections import ConfigDict
  c = ConfigDict({"data": {"chat_template": "hf", "tokenizer": str(tmp_path)}})
  t = chat.from_config(c)
  r = formats.to_record([ "Q1", "A1", "Q2", "A2"], template=t)
  assert r.text == ("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
                    "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n")
  pieces = pipeline._pieces(r.text, r.prompt_spans)
  assert [p for p, is_prompt in pieces if not is_prompt] == ["A1<|im_end|>\n", "A2<|im_end|>\n"]
  (tmp_path / "bare").mkdir()
  c.data.tokenizer = str(tmp_path / "bare")
  with pytest.raises(ValueError, match="has no chat_template"):
    chat.from_config(c)
