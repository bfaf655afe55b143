"""Files as users have them: a UTF-8 byte-order mark, Windows line ends, a trailing empty line,
keys in other capitalisations; the rest refused with one line naming the file and the item."""
import json

import pytest

from medmoe_jax.data import formats
from medmoe_jax.evaluation import mcq

ITEMS = [{"question": "Which organ makes insulin?", "options": "(A) Liver\n(B) Pancreas",
          "answer": "(B)", "source": "medqa-usmle"},
         {"question": "Which vitamin prevents scurvy?", "options": "(A) C\n(B) D\n(C) K",
          "answer": "(A)", "source": "medqa-usmle"}]


def _as_user_file(records, *, capitalise=False):
  if capitalise:
    records = [{k.capitalize(): v for k, v in r.items()} for r in records]
  lines = [json.dumps(r, ensure_ascii=False) for r in records]
  return b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _key(items):
  return [(it.question, it.options, it.answer, it.source, it.raw_options) for it in items]


@pytest.mark.parametrize("capitalise", [False, True])
def test_mcq_jsonl_with_bom_crlf_trailing_line_and_capitalised_keys(tmp_path, capitalise):
  clean = tmp_path / "clean.jsonl"
  clean.write_text("\n".join(json.dumps(r) for r in ITEMS), encoding="utf-8")
  user = tmp_path / "user.jsonl"
  user.write_bytes(_as_user_file(ITEMS, capitalise=capitalise))
  assert _key(mcq.load_file(str(user))) == _key(mcq.load_file(str(clean)))


def test_mcq_json_array_with_bom_and_crlf(tmp_path):
  f = tmp_path / "bench.json"
  f.write_bytes(b"\xef\xbb\xbf" + json.dumps(ITEMS, indent=2).replace("\n", "\r\n").encode() + b"\r\n")
  assert [it.answer for it in mcq.load_file(str(f))] == ["B", "A"]
  mmed = tmp_path / "English.jsonl"  # MMedBench keys in another capitalisation
  mmed.write_text(json.dumps({"Question": "Q?", "Options": {"A": "x", "B": "y"},
                              "Answer_idx": "B"}) + "\n", encoding="utf-8")
  (item,) = mcq.load_file(str(mmed))
  assert (item.answer, item.lang, item.letters) == ("B", "en", "AB")


def test_mcq_refuses_the_rest_with_one_line_naming_file_and_item(tmp_path):
  both = tmp_path / "both.jsonl"
  both.write_text(json.dumps(dict(ITEMS[0], Question="again")) + "\n", encoding="utf-8")
  with pytest.raises(mcq.MCQFormatError) as e:
    mcq.load_file(str(both))
  assert str(e.value).startswith(f"{both}: item 0: keys 'question' and 'Question'")
  assert "\n" not in str(e.value)
  latin = tmp_path / "latin1.jsonl"
  latin.write_bytes(json.dumps(ITEMS[0]).encode() + b"\n" + '{"question": "Qu\xe9?"}'.encode("latin-1"))
  with pytest.raises(mcq.MCQFormatError, match=rf"^{latin}:2: not UTF-8 \(byte 0xe9\)"):
    mcq.load_file(str(latin))


def test_corpus_records_with_capitalised_keys_bom_crlf(tmp_path):
  f = tmp_path / "sft.jsonl"
  f.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([
      json.dumps({"Question": "Dose?", "Answer": "500 mg.", "Lang": "en"}),
      json.dumps({"Text": "Plain text.", "LANG": "en"}),
      json.dumps({"Messages": [{"Role": "user", "Content": "Hi"},
                               {"Role": "assistant", "Content": "Hello."}]}),
      ""]).encode() + b"\r\n")
  recs = [r for _, r in formats.iter_records(str(f))]
  assert [r.text for r in recs] == ["User:Dose?\nAssistant:500 mg.", "Plain text.",
                                    "User:Hi\nAssistant:Hello."]
  assert [r.lang for r in recs] == ["en", "en", None]
  both = tmp_path / "both.jsonl"
  both.write_text(json.dumps({"text": "a", "Text": "b"}) + "\n", encoding="utf-8")
  (loc, err), = list(formats.iter_records(str(both)))
  assert isinstance(err, formats.DataError) and str(err) == (
      f"{both}:1: fields 'text' and 'Text' differ only in capitalisation; keep one")
