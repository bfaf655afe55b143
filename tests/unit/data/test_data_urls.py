"""Sources at URLs and a data_dir in a bucket, through fsspec's in-memory filesystem (a real
fsspec filesystem, in this process: what gs:// does through gcsfs, tests/e2e/test_gcs.py runs
against a GCS emulator)."""
import gzip
import json

import fsspec
import pytest

from medmoe_jax import urls
from medmoe_jax.data import formats, sources, specs


@pytest.fixture
def bucket():
  fs = fsspec.filesystem("memory")
  fs.rm("/bkt", recursive=True) if fs.exists("/bkt") else None
  yield fs
  fs.rm("/bkt", recursive=True) if fs.exists("/bkt") else None


def _put_sample(fs, langs=("de", "en")):
  for lang in langs:
    fs.put_file(str(specs.SAMPLE_TEXT_DIR / f"{lang}.jsonl"), f"/bkt/corpus/{lang}.jsonl")


def test_globs_and_records_read_from_urls(bucket):
  _put_sample(bucket)
  data = (specs.SAMPLE_TEXT_DIR / "en.jsonl").read_bytes()
  bucket.pipe_file("/bkt/corpus/zz.jsonl.gz", gzip.compress(data))
  spec = specs.SourceSpec(name="corpus", paths=("memory://bkt/corpus/*.jsonl",))
  assert spec.files() == ["memory:///bkt/corpus/de.jsonl", "memory:///bkt/corpus/en.jsonl"]
  local = [r.text for _, r in formats.iter_records(str(specs.SAMPLE_TEXT_DIR / "en.jsonl"))]
  assert [r.text for _, r in formats.iter_records("memory://bkt/corpus/en.jsonl")] == local
  assert [r.text for _, r in formats.iter_records("memory://bkt/corpus/zz.jsonl.gz")] == local
  with pytest.raises(FileNotFoundError, match="input file not found: memory://bkt/corpus/nope"):
    specs.SourceSpec(name="c", paths=("memory://bkt/corpus/nope.jsonl",)).files()
  with pytest.raises(FileNotFoundError, match="matches no file"):
    specs.SourceSpec(name="c", paths=("memory://bkt/corpus/*.parquet",)).files()


def test_file_key_changes_when_an_object_is_rewritten(bucket):
  bucket.pipe_file("/bkt/x.jsonl", b'{"text": "a", "lang": "en"}\n')
  before = urls.file_key("memory://bkt/x.jsonl")
  bucket.pipe_file("/bkt/x.jsonl", b'{"text": "b", "lang": "en"}\n')
  after = urls.file_key("memory://bkt/x.jsonl")
  assert before[:2] == after[:2] == ["memory://bkt/x.jsonl", 28] and before[2] != after[2]


def test_a_bucket_data_dir_is_built_once_and_read_from_a_local_copy(bucket, tmp_path, monkeypatch):
  _put_sample(bucket)
  spec = specs.SourceSpec(name="corpus", paths=("memory://bkt/corpus/*.jsonl",))
  logs = []
  monkeypatch.setenv("MEDMOE_JAX_CACHE", str(tmp_path / "worker0"))
  first = sources.build_source(spec, "memory://bkt/data", log=logs.append)
  assert first.built and logs == [
      f"building source 'corpus' from 2 file(s) into {first.directory}",
      "uploading source 'corpus' to memory://bkt/data/corpus/" + sources.FORMAT_VERSION]
  remote = bucket.find("/bkt/data/corpus")
  assert any(".array_record-" in p for p in remote) and any(p.endswith("/metadata.json") for p in remote)

  # Another machine (an empty cache): downloads the build, builds nothing, reads the same records.
  monkeypatch.setenv("MEDMOE_JAX_CACHE", str(tmp_path / "worker1"))
  logs.clear()
  second = sources.build_source(spec, "memory://bkt/data", log=logs.append)
  assert not second.built and logs == []
  assert str(second.directory).startswith(str(tmp_path / "worker1"))
  for split in ("train", "validation"):
    a, b = first[split], second[split]
    assert len(a) == len(b) > 0
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]

  # New inputs: rebuilt, and the bucket keeps none of the old build's files.
  bucket.pipe_file("/bkt/corpus/en.jsonl", b'{"text": "only one record", "lang": "en"}\n' * 40)
  third = sources.build_source(spec, "memory://bkt/data", log=logs.append)
  docs = third.stats["documents"]
  assert third.built and docs["train"]["en"] + docs["validation"].get("en", 0) == 40
  version = f"/bkt/data/corpus/{sources.FORMAT_VERSION}"
  meta = json.loads(bucket.cat_file(f"{version}/metadata.json"))
  assert meta["stats"] == third.stats
  local = sorted(str(p.relative_to(third.directory)) for p in third.directory.rglob("*") if p.is_file())
  assert sorted(p[len(version) + 1:] for p in bucket.find(version)) == local


def _wordlevel_tokenizer_json() -> str:
  from tokenizers import Tokenizer as HF, models, pre_tokenizers
  vocab = {"<|endoftext|>": 0, "<|im_end|>": 1, "[UNK]": 2, "fever": 3, "cough": 4}
  hf = HF(models.WordLevel(vocab, unk_token="[UNK]"))
  hf.pre_tokenizer = pre_tokenizers.Whitespace()
  return hf.to_str()


def test_a_tokenizer_at_a_url_loads_as_the_local_one(bucket, tmp_path, monkeypatch):
  from ml_collections import ConfigDict

  from medmoe_jax.data import chat, tokenizer
  monkeypatch.setenv("MEDMOE_JAX_CACHE", str(tmp_path / "cache"))
  # A sentencepiece model file.
  bucket.put_file(str(tokenizer.SAMPLE_MODEL_PATH), "/bkt/sp/tokenizer.model")
  remote = tokenizer.load_tokenizer("memory://bkt/sp/tokenizer.model")
  local = tokenizer.load_tokenizer("sample")
  text = "Fieber und Husten seit drei Tagen. 发烧"
  assert remote.encode(text) == local.encode(text) and remote.vocab_size == local.vocab_size
  # An HF model directory: its tokenizer files are read, its weights are not copied.
  config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "chat_template": "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"}
  bucket.pipe_file("/bkt/model/tokenizer.json", _wordlevel_tokenizer_json().encode())
  bucket.pipe_file("/bkt/model/tokenizer_config.json", json.dumps(config).encode())
  bucket.pipe_file("/bkt/model/model.safetensors", b"\0" * 1000)
  tok = tokenizer.load_tokenizer("memory://bkt/model")
  assert tok.encode("fever cough") == [3, 4]
  assert (tok.id_to_piece(tok.eos_id), tok.id_to_piece(tok.pad_id)) == ("<|im_end|>", "<|endoftext|>")
  copied = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()}
  assert copied == {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"}
  # config.data.chat_template='hf' reads the template from the same directory.
  c = ConfigDict({"data": {"chat_template": "hf", "tokenizer": "memory://bkt/model"}})
  assert formats.to_record(["Q", "A"], template=chat.from_config(c)).text == "Q<|im_end|>A<|im_end|>"
  with pytest.raises(FileNotFoundError, match="tokenizer not found: memory://bkt/nothing"):
    tokenizer.load_tokenizer("memory://bkt/nothing")
  c.data.tokenizer = "memory://bkt/nothing"
  with pytest.raises(ValueError, match="chat_template='hf': memory://bkt/nothing: no such file"):
    chat.from_config(c)
