"""The shipped sample tokenizer: ids, exact round trips across scripts, determinism, errors."""

import os
import pathlib
import pickle
import subprocess
import sys

import pytest

from medmoe_jax.data import sources, tokenizer

from conftest import REPO  # noqa: E402


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


@pytest.mark.e2e
def test_cli_trains_from_a_config_and_reproduces_the_shipped_model(tmp_path):
  # The sample config's one source is the embedded corpus: training on it through the CLI is
  # exactly how the shipped model was made.
  out = tmp_path / "tok.model"
  subprocess.run([sys.executable, "-m", "medmoe_jax.data", "tokenizer", "--config=configs/post_moe.py",
                  f"--workdir={tmp_path / 'run'}", f"--out={out}", "--vocab_size=4096"],
                 cwd=REPO, env=_env(), check=True, capture_output=True, text=True)
  assert out.read_bytes() == tokenizer.SAMPLE_MODEL_PATH.read_bytes()


def test_train_tokenizer_user_vocab_size_and_byte_fallback(tmp_path):
  texts = [_first_text(lang) for lang in ("en", "zh", "ar", "hi", "sw")] * 3
  tok = tokenizer.train_tokenizer(texts, tmp_path / "small.model", vocab_size=600)
  assert tok.vocab_size == 600 and tokenizer.load_tokenizer(str(tmp_path / "small.model")).vocab_size == 600
  for text in texts[:5] + ["unseen: 🩺 Ωμέγα"]:
    assert tok.decode(tok.encode(text)) == text and tok.unk_id not in tok.encode(text)


# ---------------------------------------------------------------- Hugging Face tokenizer.json


def _env():
  return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory):
  """A small byte-level BPE tokenizer.json in Qwen2's style (no BOS, <|endoftext|>), built here."""
  from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers

  texts = [r["text"] for p in sources.sample_files() for r in sources.read_jsonl(p)]
  hf = HF(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  hf.train_from_iterator(texts, trainer)
  d = tmp_path_factory.mktemp("hf_model")
  hf.save(str(d / "tokenizer.json"))
  return d / "tokenizer.json"


def test_hf_tokenizer_json(hf_json):
  tok = tokenizer.load_tokenizer(str(hf_json))
  assert isinstance(tok, tokenizer.HFTokenizer) and tok.vocab_size == 800
  eot = tok.id_to_piece(tok.eos_id)
  assert eot == "<|endoftext|>" and tok.bos_id == tok.pad_id == tok.eos_id and tok.unk_id is None
  for text in [_first_text("zh"), _first_text("ar"), "  spaces\ttabs\n🩺 Ωμέγα"]:
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.eos_id not in ids
  assert tok.decode([tok.bos_id, *tok.encode("fever"), tok.eos_id]) == "fever"
  tok2 = pickle.loads(pickle.dumps(tok))
  assert tok2.encode("malaria 疟疾") == tok.encode("malaria 疟疾") and tok2.eos_id == tok.eos_id


def test_hf_model_directory_declares_special_tokens(hf_json):
  (hf_json.parent / "tokenizer_config.json").write_text(
      '{"bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}')
  try:
    tok = tokenizer.load_tokenizer(str(hf_json.parent))
    assert tok.id_to_piece(tok.eos_id) == "<|im_end|>" and tok.bos_id == tok.eos_id
    assert tok.id_to_piece(tok.pad_id) == "<|endoftext|>"
  finally:
    (hf_json.parent / "tokenizer_config.json").unlink()


def test_pipeline_with_hf_tokenizer(hf_json, tmp_path):
  from medmoe_jax.data import pipeline

  tok = tokenizer.load_tokenizer(str(hf_json))
  docs = [{"text": _first_text(lang), "lang": lang} for lang in ("en", "zh", "th")]
  batch = next(iter(pipeline.make_lm_dataset(docs, languages=["en", "zh", "th"], tokenizer=tok,
                                             seq_len=2048, batch_size=1, seed=0)))
  seg = batch["segment_ids"][0]
  texts = {tok.decode(batch["tokens"][0][seg == s]) for s in set(seg.tolist()) - {0}}
  assert texts <= {d["text"] for d in docs} and texts
  assert batch["tokens"][0][0] == tok.bos_id


def test_tokenizer_spec_errors(tmp_path):
  with pytest.raises(ValueError, match="config.data.tokenizer is empty"):
    tokenizer.load_tokenizer("")
  with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
    tokenizer.load_tokenizer(str(tmp_path))
