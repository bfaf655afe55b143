"""SentencePiece tokenizer: a thin wrapper, the shipped sample model, and how it is trained.

Why a wrapper: the pipeline, the evaluation code and the generator need four ids (pad, unk, bos,
eos), `encode` without special tokens (the pipeline adds BOS/EOS itself, so packing sees exact
lengths) and `decode`. Nothing else of sentencepiece leaks out, so a HF tokenizer can later stand
behind the same interface.

The sample model (`sample/tokenizer.model`) is BPE over the embedded 20-language corpus, trained
with byte fallback (any UTF-8 text encodes; nothing maps to <unk>) and identity normalisation with
no dummy prefix and no whitespace folding, so `decode(encode(s)) == s` for every string `s`. That
exact round trip matters to log-likelihood evaluation, which scores a continuation by the ids of
`context + continuation`. Re-create it with `python -m medmoe_jax.data.tokenizer train`; training
is single-threaded over a fixed, sorted input order, so the file comes out byte-identical.
"""

from __future__ import annotations

import io
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SAMPLE_VOCAB_SIZE = 4096

_SAMPLE_DIR = pathlib.Path(__file__).resolve().parent / "sample"
SAMPLE_MODEL_PATH = _SAMPLE_DIR / "tokenizer.model"


class Tokenizer:
  """A SentencePiece model with the ids the rest of medmoe_jax relies on."""

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

  # Pickle by model bytes, so a pipeline holding a tokenizer can go to grain worker processes.
  def __getstate__(self):
    return {"model_proto": self.model_proto, "name": self.name}

  def __setstate__(self, state):
    self.__init__(state["model_proto"], state["name"])

  def __repr__(self) -> str:
    return f"Tokenizer({self.name}, vocab_size={self.vocab_size})"


def load_tokenizer(spec: str) -> Tokenizer:
  """`"sample"` -> the shipped sample model; anything else -> path to a `.model` file."""
  path = SAMPLE_MODEL_PATH if spec == "sample" else pathlib.Path(os.path.expanduser(spec))
  if not path.is_file():
    hint = (
        "re-create it with `python -m medmoe_jax.data.tokenizer train`"
        if spec == "sample"
        else "pass 'sample' or the path of a SentencePiece .model file"
    )
    raise FileNotFoundError(f"tokenizer model not found: {path} ({hint})")
  return Tokenizer(path.read_bytes(), name=str(path))


def _sample_texts() -> Iterator[str]:
  # Imported here so `tokenizer` stays importable without the tfds stack.
  from medmoe_jax.data import sources

  for path in sources.sample_files():
    for rec in sources.read_jsonl(path):
      yield rec["text"]


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
  spm.set_random_generator_seed(0)
  model = io.BytesIO()
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
      max_sentence_length=1 << 16,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      num_threads=1,
      minloglevel=2,
  )
  data = model.getvalue()
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_bytes(data)
  return Tokenizer(data, name=str(out_path))


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
