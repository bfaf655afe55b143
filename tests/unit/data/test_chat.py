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


def _as_official_labels(rec, eos_id):
  """Our row (BOS, then the official input ids) as the official (input_ids, labels): the label
  of token t is its target where loss_mask marks it, else -100 (HF shifts labels itself)."""
  targets, mask = pipeline.targets_of(rec["tokens"], rec["loss_mask"], eos_id)
  ids = rec["tokens"][1:].tolist()
  labels = np.where(mask[1:] == 1, targets[1:], -100).tolist()
  return ids, labels


def _messages(*turns):
  return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def test_tokens_and_labels_equal_the_official_preprocessing(tmp_path, tok):
  qa = {"question": "Which drug treats malaria?", "answer": "Artemisinin, 3 days.", "lang": "en"}
  two = ["Hi", "Hello.", "Fever?", "Rest."]
  three = ["头痛怎么办？", "多休息。", "And fever?", "Paracetamol, 500 mg.", "Merci !", "De rien."]
  got = _tokenized(tmp_path, tok, [qa, {"messages": _messages(*two), "lang": "en"},
                                   {"messages": _messages(*three), "lang": "en"}])
  for rec, turns in zip(got, ([qa["question"], qa["answer"]], two, three)):
    ids, labels = _official_preprocess(turns, tok.encode, tok.eos_id)
    # Our rows start with BOS (masked); the rest are the official input ids and labels.
    assert rec["tokens"][0] == tok.bos_id and rec["loss_mask"][0] == 0
    assert _as_official_labels(rec, tok.eos_id) == (ids, labels)
    # One EOS label per later user turn (input "\n", label EOS), and the final EOS.
    eos_at_user = [i for i, (l, t) in enumerate(zip(labels, ids)) if l == tok.eos_id and t != l]
    assert len(eos_at_user) == len(turns) // 2 - 1
    assert all(tok.decode(ids[i:]).startswith("\nUser:") for i in eos_at_user)
  # The single-turn record: the targets are exactly the answer and EOS.
  qa_rec = got[0]
  target = qa_rec["tokens"][qa_rec["loss_mask"] == 1]
  assert target[-1] == tok.eos_id
  assert tok.decode(target[:-1]) == "Artemisinin, 3 days."
  assert tok.decode(qa_rec["tokens"][qa_rec["loss_mask"] == 0]) == "User:Which drug treats malaria?\nAssistant:"


class _Chars:
  """One token per character (ids 3 + code point), BOS 1, EOS 2: positions countable by hand."""
  bos_id, eos_id = 1, 2

  def encode(self, text):
    return [3 + ord(ch) for ch in text]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


def _char_row(turns):
  r = formats.to_record({"messages": _messages(*turns)})
  src = [{"text": r.text, "lang": "en",
          "prompt_spans": {"segments": [list(s) for s in r.prompt_spans],
                           "eos_labels": list(r.eos_labels)}}]
  (rec,) = pipeline._ReadTokenize(src, _Chars(), {"en": 0})([0])
  return rec


def test_multi_turn_labels_at_hand_counted_positions():
  """"User:Hi" = tokens 0-6, "\nAssistant:Yo" = 7-19 (the first 11 masked), "\nUser:Q" = 20-26,
  "\nAssistant:No" = 27-39, EOS = 40 (official positions; ours are one later, after BOS)."""
  rec = _char_row(["Hi", "Yo", "Q", "No"])
  ids, labels = _as_official_labels(rec, 2)
  c = _Chars()
  assert ids == c.encode("User:Hi\nAssistant:Yo\nUser:Q\nAssistant:No") + [2]
  assert [i for i, l in enumerate(labels) if l != -100] == [18, 19, 20, 38, 39, 40]
  assert [labels[i] for i in (18, 19, 20, 38, 39, 40)] == c.encode("Yo") + [2] + c.encode("No") + [2]
  assert ids[20] == c.encode("\n")[0]  # the input stays "\n"; its label is EOS
  assert _as_official_labels(rec, 2) == _official_preprocess(["Hi", "Yo", "Q", "No"], c.encode, 2)
  # Three rounds: EOS labels at the start of both later user turns.
  rec3 = _char_row(["Hi", "Yo", "Q", "No", "R", "Ok"])
  ids3, labels3 = _as_official_labels(rec3, 2)
  assert [i for i, l in enumerate(labels3) if l != -100] == [18, 19, 20, 38, 39, 40, 58, 59, 60]
  assert [i for i, l in enumerate(labels3) if l == 2] == [20, 40, 60]
  assert _as_official_labels(rec3, 2) == _official_preprocess(["Hi", "Yo", "Q", "No", "R", "Ok"], c.encode, 2)


def test_training_loss_targets_eos_at_the_next_user_turn():
  """token_targets (the training loss) reads the EOS label: the last answer token predicts EOS."""
  import jax.numpy as jnp
  from medmoe_jax.training.step import token_targets
  rec = _char_row(["Hi", "Yo", "Q", "No"])
  n = len(rec["tokens"])
  targets, mask = pipeline.targets_of(rec["tokens"], rec["loss_mask"], 2)
  batch = {"tokens": rec["tokens"][None], "targets": targets[None],
           "loss_mask": mask[None], "segment_ids": np.ones((1, n), np.int32)}
  targets, w = token_targets({k: jnp.asarray(v) for k, v in batch.items()})
  targets, w = np.asarray(targets[0]), np.asarray(w[0])
  # Row position = official position + 1 (BOS); position t predicts the label of t+1.
  assert np.flatnonzero(w).tolist() == [18, 19, 20, 38, 39, 40]
  assert targets[20] == 2 and rec["tokens"][21] == 3 + ord("\n")


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


def test_batches_carry_the_eos_target_and_a_0_1_loss_mask():
  """Through packing and batching: `targets` holds EOS where the next user turn starts, the
  loss_mask is 0/1, and everything else is the token itself."""
  r = formats.to_record({"messages": _messages("Hi", "Yo", "Q", "No")})
  src = [{"text": r.text, "lang": "en",
          "prompt_spans": {"segments": [list(s) for s in r.prompt_spans],
                           "eos_labels": list(r.eos_labels)}}]
  (batch,) = list(pipeline.make_eval_batches(src, languages=["en"], tokenizer=_Chars(), seq_len=48,
                                             batch_size=1))
  tokens, targets, mask = batch["tokens"][0], batch["targets"][0], batch["loss_mask"][0]
  assert set(mask.tolist()) == {0, 1}
  assert np.flatnonzero(targets != tokens).tolist() == [21]  # row = official position 20 + BOS
  assert targets[21] == 2 and tokens[21] == 3 + ord("\n")
  assert np.flatnonzero(mask).tolist() == [19, 20, 21, 39, 40, 41]
