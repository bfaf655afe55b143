"""Which special tokens scoring puts before a request, per tokenizer family (Llama-style: has a
BOS; Qwen2: none, its BOS stand-in is EOS), with literal token ids: log-likelihood, rolling
log-likelihood and generate_until as lm-evaluation-harness 0.4.1 (MoE-LPR's) tokenizes them,
held-out perplexity as training rows hold documents."""
import functools

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax.data import pipeline
from medmoe_jax.evaluation import lm as lm_lib
from medmoe_jax.model import Transformer


class _Chars:
  """One token per character, id 3 + code point; EOS 2. With BOS (Llama-style): bos_id 1. Without
  (Qwen2-style, as HFTokenizer has it): has_bos False and bos_id stands in with EOS."""
  eos_id, pad_id, vocab_size = 2, 0, 4096

  def __init__(self, has_bos: bool):
    self.has_bos = has_bos
    self.bos_id = 1 if has_bos else 2

  def encode(self, text):
    return [3 + ord(ch) for ch in text]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def decode(self, ids):
    return "".join(chr(i - 3) for i in ids if i >= 3)


FAMILIES = [pytest.param(True, id="with-bos"), pytest.param(False, id="no-bos")]


@pytest.mark.parametrize("has_bos", FAMILIES)
def test_loglikelihood_request_ids_have_no_bos_for_either_family(has_bos):
  tok = _Chars(has_bos)
  # "Q?" -> 84 66; "A:" -> 68 61; " b" -> 35 101.
  assert lm_lib.request_ids(tok, "Q?\nA:", " b") == ([84, 66, 13, 68, 61], [35, 101])
  # Whitespace ending the context moves to the continuation (the harness's _encode_pair).
  assert lm_lib.request_ids(tok, "A: ", "b") == ([68, 61], [35, 101])
  # An empty context is EOS, whatever the family (0.4.1's eot_token_id).
  assert lm_lib.request_ids(tok, "", "ab") == ([2], [100, 101])


@functools.cache
def _params():
  c = _config()
  return c, jax.device_get(jax.jit(lambda: nnx.to_pure_dict(nnx.state(
      Transformer(cfg_lib.model_spec(c), rngs=nnx.Rngs(0)), nnx.Param)))())


def _config():
  c = load_config("dense")
  c.model.update(dict(d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, d_ff=64))
  c.mesh.update(dict(data=1, fsdp=1, expert=1, tensor=1))
  return c


def _model(has_bos):
  c, params = _params()
  from medmoe_jax import sharding
  lm = lm_lib.LanguageModel.from_params(cfg_lib.resolve(c), params,
                                        mesh=sharding.make_mesh(c, jax.devices()[:1]), batch_size=2)
  lm.tokenizer = _Chars(has_bos)
  fed = []  # every row the model scores, up to its last real token
  real_scores = lm.token_scores

  def recording(batch):
    for row, seg in zip(batch["tokens"], batch["segment_ids"]):
      if seg.any():
        fed.append(row[seg > 0].tolist())
    return real_scores(batch)

  lm.token_scores = recording
  return lm, fed


@pytest.mark.parametrize("has_bos", FAMILIES)
def test_the_model_scores_exactly_these_ids(has_bos):
  lm, fed = _model(has_bos)
  lm.loglikelihood([("A:", " b"), ("", "ab")])
  assert sorted(fed) == sorted([[68, 61, 35, 101], [2, 100, 101]])
  fed.clear()
  lm.loglikelihood_rolling(["abc"])
  assert fed == [[2, 100, 101, 102]]
  prompts = []
  real_generate = lm.generate
  lm.generate = lambda p, **kw: prompts.extend(p) or real_generate(p, **kw)
  lm.generate_until([("A:", ["\n"], 2), ("", ["\n"], 2)])
  assert [ids for ids, _ in prompts] == [[68, 61], [2]]


@pytest.mark.parametrize("has_bos,first", [pytest.param(True, 1, id="with-bos"),
                                           pytest.param(False, 2, id="no-bos")])
def test_heldout_rows_start_documents_as_training_does(has_bos, first):
  """Perplexity's rows are training's: BOS where the tokenizer has one, else EOS (Qwen2)."""
  docs = [{"text": "ab", "lang": "en"}, {"text": "c", "lang": "en"}]
  (batch,) = list(pipeline.make_eval_batches(docs, languages=["en"], tokenizer=_Chars(has_bos),
                                             seq_len=8, batch_size=1))
  assert batch["tokens"][0].tolist() == [first, 100, 101, 2, first, 102, 2, 0]
  assert batch["segment_ids"][0].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]
