"""Tokenizers: sentencepiece (trained here, or a .model file) and HF `tokenizer.json`.

Why a wrapper: the pipeline, the evaluation code and the generator need four ids (pad, unk, bos,
eos), `encode` without special tokens (the pipeline adds BOS/EOS itself, so packing sees exact
lengths) and `decode`. `Tokenizer` (sentencepiece) and `HFTokenizer` (the `tokenizers` library,
for models imported from Hugging Face) offer the same interface; `load_tokenizer` picks one from
a spec: "sample", a `.model` file, a `tokenizer.json`, or an HF model directory.

The sample model (`sample/tokenizer.model`) is BPE over the embedded 20-language corpus, trained
with byte fallback (any UTF-8 text encodes; nothing maps to <unk>) and identity normalisation with
no dummy prefix and no whitespace folding, so `decode(encode(s)) == s` for every string `s`. That
exact round trip matters to log-likelihood evaluation, which scores a continuation by the ids of
`context + continuation`. Re-create it with `python -m medmoe_jax.data.tokenizer train` (or
`python -m medmoe_jax.data tokenizer --config=configs/post_moe.py`, which trains the same way on a
config's sources); training is single-threaded over a fixed input order, so the file comes out
byte-identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import random
import sys
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from medmoe_jax import urls

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SAMPLE_VOCAB_SIZE = 4096

_SAMPLE_DIR = pathlib.Path(__file__).resolve().parent / "sample"
SAMPLE_MODEL_PATH = _SAMPLE_DIR / "tokenizer.model"


class Tokenizer:
  """A SentencePiece model with the ids the rest of medmoe_jax relies on."""

  kind = "sentencepiece"
  has_bos = True  # a BOS piece is required (checked below)

  def __init__(self, model_proto: bytes, name: str = "<memory>"):
    self.name = name
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    if self._sp.pad_id() < 0 or self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
      raise ValueError(
          f"tokenizer {name}: the model must define pad, bos and eos pieces "
          f"(got pad={self._sp.pad_id()}, bos={self._sp.bos_id()}, eos={self._sp.eos_id()}); "
          "train it with pad_id/bos_id/eos_id set, e.g. train_sample_tokenizer()."
      )

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS/EOS."""
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; pad/bos/eos ids are dropped (they are control pieces)."""
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  @property
  def model_proto(self) -> bytes:
    return self._sp.serialized_model_proto()

  @property
  def fingerprint(self) -> str:
    """sha256 of the model: what token statistics are cached under."""
    return hashlib.sha256(self.model_proto).hexdigest()

  # Pickle by model bytes, so a pipeline holding a tokenizer can go to grain worker processes.
  def __getstate__(self):
    return {"model_proto": self.model_proto, "name": self.name}

  def __setstate__(self, state):
    self.__init__(state["model_proto"], state["name"])

  def __repr__(self) -> str:
    return f"Tokenizer({self.name}, vocab_size={self.vocab_size})"


class HFTokenizer:
  """A Hugging Face `tokenizer.json` (the `tokenizers` library) behind the Tokenizer interface.

  Special tokens come from the model directory's tokenizer_config.json / special_tokens_map.json
  when present, else from well-known names among the special tokens. A tokenizer without a BOS
  token (Qwen2) uses its EOS as BOS: documents then start after `<|endoftext|>`, which is how
  such models saw document starts in pretraining.
  """

  kind = "hf"
  _BOS = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
  _EOS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")
  _PAD = ("<pad>", "<|pad|>", "[PAD]")
  _UNK = ("<unk>", "[UNK]")

  def __init__(self, tokenizer_json: str, name: str = "<memory>",
               special: dict[str, str | None] | None = None):
    from tokenizers import Tokenizer as _HF  # pylint: disable=g-import-not-at-top

    self.name = name
    self._json = tokenizer_json
    self._special = dict(special or {})
    self._tok = _HF.from_str(tokenizer_json)
    ids = {k: self._resolve(k, names) for k, names in
           (("bos", self._BOS), ("eos", self._EOS), ("pad", self._PAD), ("unk", self._UNK))}
    if ids["eos"] is None:
      raise ValueError(
          f"tokenizer {name}: no EOS token found (looked for {', '.join(self._EOS)} and "
          "tokenizer_config.json's eos_token); add one or use a directory with tokenizer_config.json")
    self._eos = ids["eos"]
    # Whether the model has a BOS token of its own (Hugging Face's call then adds it); without
    # one, `bos_id` stands in with EOS for document starts, and the official evaluation prompts
    # start without any.
    self.has_bos = ids["bos"] is not None
    self._bos = ids["bos"] if ids["bos"] is not None else ids["eos"]
    self._pad = ids["pad"] if ids["pad"] is not None else ids["eos"]
    self._unk = ids["unk"]

  def _resolve(self, key: str, names: Sequence[str]) -> int | None:
    if key in self._special:  # declared by the model directory (None: the model has none)
      token = self._special[key]
      if token is None:
        return None
      i = self._tok.token_to_id(token)
      if i is None:
        raise ValueError(f"tokenizer {self.name}: {key}_token {token!r} is not in the vocabulary")
      return i
    for token in names:
      i = self._tok.token_to_id(token)
      if i is not None:
        return i
    return None

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def unk_id(self) -> int | None:
    return self._unk

  @property
  def bos_id(self) -> int:
    return self._bos

  @property
  def eos_id(self) -> int:
    return self._eos

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS/EOS or any other added special token."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; special tokens (bos/eos/pad, ...) are dropped."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  @property
  def fingerprint(self) -> str:
    return hashlib.sha256((self._json + json.dumps(self._special, sort_keys=True)).encode()).hexdigest()

  def __getstate__(self):
    return {"json": self._json, "name": self.name, "special": self._special}

  def __setstate__(self, state):
    self.__init__(state["json"], state["name"], state["special"])

  def __repr__(self) -> str:
    return f"HFTokenizer({self.name}, vocab_size={self.vocab_size})"


def _hf_special_tokens(model_dir: pathlib.Path) -> dict[str, str | None]:
  """bos/eos/pad/unk token strings declared by an HF model directory (missing keys: undeclared)."""
  out: dict[str, str | None] = {}
  for fname in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
    path = model_dir / fname
    if not path.is_file():
      continue
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in ("bos", "eos", "pad", "unk"):
      if f"{key}_token" in cfg:
        v = cfg[f"{key}_token"]
        out[key] = v.get("content") if isinstance(v, dict) else v
  return out


# What a tokenizer in an HF model directory consists of (the rest, e.g. weights, is not read).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json")


def local_path(spec: str) -> str:
  """config.data.tokenizer as a local path: a URL (gs://..., a file or an HF model directory in
  a bucket) is copied to the local cache first, a directory's TOKENIZER_FILES only."""
  try:
    return urls.local_path(spec, "tokenizers", TOKENIZER_FILES)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"tokenizer not found: {e}") from None


def load_tokenizer(spec: str) -> Tokenizer | HFTokenizer:
  """A tokenizer from a spec (config.data.tokenizer):

  "sample"                  the shipped sentencepiece model
  path/to/x.model           a sentencepiece model
  path/to/tokenizer.json    a Hugging Face tokenizer (special tokens guessed from their names)
  path/to/hf_model_dir/     its tokenizer.json (special tokens from tokenizer_config.json) or,
                            failing that, its tokenizer.model
  Each may be a URL (gs://...): see `local_path`.
  """
  if not spec:
    raise ValueError("config.data.tokenizer is empty: set 'sample', a sentencepiece .model file, "
                     "a tokenizer.json, or a Hugging Face model directory")
  path = SAMPLE_MODEL_PATH if spec == "sample" else pathlib.Path(local_path(spec))
  if path.is_dir():
    if (path / "tokenizer.json").is_file():
      return HFTokenizer((path / "tokenizer.json").read_text(encoding="utf-8"),
                         name=str(path / "tokenizer.json"), special=_hf_special_tokens(path))
    if (path / "tokenizer.model").is_file():
      path = path / "tokenizer.model"
    else:
      raise FileNotFoundError(f"tokenizer directory {path} holds neither tokenizer.json nor "
                              "tokenizer.model")
  if not path.is_file():
    hint = (
        "re-create it with `python -m medmoe_jax.data.tokenizer train`"
        if spec == "sample"
        else "pass 'sample', a .model file, a tokenizer.json or an HF model directory"
    )
    raise FileNotFoundError(f"tokenizer model not found: {path} ({hint})")
  if path.suffix == ".json":
    return HFTokenizer(path.read_text(encoding="utf-8"), name=str(path))
  return Tokenizer(path.read_bytes(), name=str(path))


def _sample_texts() -> Iterator[str]:
  # Imported here so `tokenizer` stays importable without the tfds stack.
  from medmoe_jax.data import sources

  for path in sources.sample_files():
    for rec in sources.read_jsonl(path):
      yield rec["text"]


MAX_SENTENCE_BYTES = 1 << 16


def _trainer_input(texts: Iterable[str]) -> Iterator[str]:
  """Documents as sentencepiece "sentences"; one longer than it accepts is cut at newlines."""
  for text in texts:
    if len(text.encode("utf-8")) <= MAX_SENTENCE_BYTES:
      yield text
      continue
    for line in text.split("\n"):
      for s in range(0, len(line), MAX_SENTENCE_BYTES // 4):  # <= 4 bytes a character
        if line[s : s + MAX_SENTENCE_BYTES // 4].strip():
          yield line[s : s + MAX_SENTENCE_BYTES // 4]


def sample_documents(texts: Iterable[str], max_docs: int, seed: int = 0) -> list[str]:
  """At most max_docs of `texts`, a seeded uniform sample kept in input order (all if fewer)."""
  keep: list[tuple[int, str]] = []
  rng = random.Random(seed)
  for i, text in enumerate(texts):  # reservoir sampling: one pass, bounded memory
    if len(keep) < max_docs:
      keep.append((i, text))
    else:
      j = rng.randrange(i + 1)
      if j < max_docs:
        keep[j] = (i, text)
  return [t for _, t in sorted(keep)]


def train_tokenizer(
    texts: Iterable[str],
    out_path: str | os.PathLike,
    vocab_size: int = SAMPLE_VOCAB_SIZE,
) -> Tokenizer:
  """Trains a BPE sentencepiece model on `texts` (in the given order) and writes `out_path`.

  Byte fallback (any UTF-8 text encodes; nothing maps to <unk>), identity normalisation, no dummy
  prefix: decode(encode(s)) == s. Deterministic: one thread, every sentence used, no shuffling.
  """
  texts = list(_trainer_input(texts))
  if not texts:
    raise ValueError("no training text for the tokenizer")
  spm.set_random_generator_seed(0)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9995,
        byte_fallback=True,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_piece="<pad>",
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=MAX_SENTENCE_BYTES,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
  except RuntimeError as e:
    raise ValueError(f"sentencepiece training failed for vocab_size={vocab_size}: {e} (a small "
                     "corpus supports only a small vocabulary; lower the vocab size)") from None
  data = model.getvalue()
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_bytes(data)
  return Tokenizer(data, name=str(out_path))


def train_sample_tokenizer(
    out_path: str | os.PathLike = SAMPLE_MODEL_PATH,
    vocab_size: int = SAMPLE_VOCAB_SIZE,
    texts: Sequence[str] | None = None,
) -> Tokenizer:
  """Trains the BPE sample tokenizer on the embedded corpus (or `texts`) and writes `out_path`.

  Deterministic: one thread, every sentence used (no sampling), inputs in sorted file order.
  """
  texts = list(_sample_texts() if texts is None else texts)
  if not texts:
    raise ValueError("no training text: the sample corpus (sample/text/*.jsonl) is empty")
  return train_tokenizer(texts, out_path, vocab_size)


def main(argv: Sequence[str]) -> int:
  if len(argv) < 1 or argv[0] != "train":
    print(
        "usage: python -m medmoe_jax.data.tokenizer train [OUT_PATH] [VOCAB_SIZE]\n"
        f"  re-creates the sample tokenizer (default {SAMPLE_MODEL_PATH}, vocab {SAMPLE_VOCAB_SIZE})",
        file=sys.stderr,
    )
    return 2
  out = argv[1] if len(argv) > 1 else SAMPLE_MODEL_PATH
  vocab = int(argv[2]) if len(argv) > 2 else SAMPLE_VOCAB_SIZE
  tok = train_sample_tokenizer(out, vocab)
  print(f"wrote {out}: vocab_size={tok.vocab_size}, {os.path.getsize(out)} bytes")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
