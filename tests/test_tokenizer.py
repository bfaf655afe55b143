"""The shipped sample tokenizer: ids, exact round trips across scripts, determinism, errors."""

import pickle

import pytest

from medmoe_jax.data import sources, tokenizer


@pytest.fixture(scope="module")
def tok():
  return tokenizer.load_tokenizer("sample")


def _first_text(lang: str) -> str:
  path = next(p for p in sources.sample_files() if p.endswith(f"/{lang}.jsonl"))
  return next(sources.read_jsonl(path))["text"]


def test_special_ids_and_size(tok):
  assert tok.vocab_size == 4096
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
  assert tokenizer.SAMPLE_MODEL_PATH.stat().st_size < 1_000_000


@pytest.mark.parametrize("lang", ["en", "zh", "ar", "hi", "th", "ja", "ko", "ru"])
def test_round_trip_sample_scripts(tok, lang):
  text = _first_text(lang)
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.bos_id not in ids and tok.eos_id not in ids and tok.unk_id not in ids
  assert 0 < len(ids) < len(text.encode("utf-8"))  # it compresses below one token per byte


@pytest.mark.parametrize(
    "text",
    [
        "高血压患者应每天监测血压。",
        "ارتفاع ضغط الدم مرض مزمن.",
        "मधुमेह एक दीर्घकालिक रोग है।",
        "โรคความดันโลหิตสูง",
        "  leading spaces,\ttabs\nand newlines  ",
        "unseen: 🩺 Ωμέγα ǅ 𝔘",  # not in the corpus: byte fallback, still exact
    ],
)
def test_round_trip_exact(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_byte_fallback_for_unseen_characters(tok):
  ids = tok.encode("🩺")
  assert [tok.id_to_piece(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0xA9>", "<0xBA>"]


def test_decode_drops_control_ids(tok):
  ids = tok.encode("fever")
  assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "fever"


def test_missing_model_names_path(tmp_path):
  missing = tmp_path / "nope.model"
  with pytest.raises(FileNotFoundError, match="nope.model"):
    tokenizer.load_tokenizer(str(missing))


def test_pickle(tok):
  tok2 = pickle.loads(pickle.dumps(tok))
  assert tok2.encode("malaria 疟疾") == tok.encode("malaria 疟疾")


def test_training_is_deterministic_and_recreates_shipped_model(tmp_path):
  a = tokenizer.train_sample_tokenizer(tmp_path / "a.model")
  b = tokenizer.train_sample_tokenizer(tmp_path / "b.model")
  assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
  assert a.vocab_size == b.vocab_size == 4096
  assert (tmp_path / "a.model").read_bytes() == tokenizer.SAMPLE_MODEL_PATH.read_bytes(), (
      "the sample corpus changed since the tokenizer was trained: run "
      "`python -m medmoe_jax.data.tokenizer train`"
  )
