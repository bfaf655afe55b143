"""Scoring with a real (rigged) model: log-likelihood picks the option the model prefers, the
exact log-probabilities, rolling windows, generate_until, and a sharded mesh == one device."""
import functools
import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax import sharding
from medmoe_jax.evaluation import mcq
from medmoe_jax.evaluation.lm import LanguageModel
from medmoe_jax.model import Transformer

ALPHA = 200.0  # a non-boosted token costs ~ALPHA: more than any difference in option lengths


def _config():
  c = load_config("dense")
  c.model.update(dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
                      tie_embeddings=False))
  return c


@functools.cache
def _initial_params():
  spec = cfg_lib.model_spec(_config())
  return jax.device_get(jax.jit(lambda: nnx.to_pure_dict(nnx.state(
      Transformer(spec, rngs=nnx.Rngs(0)), nnx.Param)))())


def _rigged(c, boosted):
  """Every position's hidden state is the same vector (all embeddings equal, attention and MLP
  outputs zeroed), and the LM head gives logit ALPHA to the `boosted` token ids, 0 to the rest:
  a model whose next-token distribution is known exactly and ignores the context."""
  p = jax.tree.map(np.array, _initial_params())
  u = np.random.RandomState(0).randn(c.model.d_model).astype(np.float32)
  p["embed"]["embedding"] = np.tile(u, (c.model.vocab_size, 1))
  blocks = p["segments"][0]["blocks"]
  blocks["attn"]["o_proj"]["kernel"] = np.zeros_like(blocks["attn"]["o_proj"]["kernel"])
  blocks["ffn"]["down_proj"]["kernel"] = np.zeros_like(blocks["ffn"]["down_proj"]["kernel"])
  n = u / np.sqrt(np.mean(u * u) + c.model.norm_eps)  # final RMSNorm of u (scale 1)
  head = np.zeros((c.model.d_model, c.model.vocab_size), np.float32)
  head[:, sorted(boosted)] = (ALPHA * n / np.dot(n, n))[:, None]
  p["lm_head"]["kernel"] = head
  return p


def _expected_logprob(ids, boosted, vocab):
  lse = np.log(len(boosted) * np.exp(ALPHA) + (vocab - len(boosted)))
  return sum((ALPHA if i in boosted else 0.0) - lse for i in ids)


ITEMS = [  # option words distinct within and across items, so the rig can prefer any one
    {"question": "Which organ pumps blood?", "options": "(A) liver\n(B) heart\n(C) kidney\n(D) stomach",
     "answer": "(B)", "source": "rig-en", "lang": "en"},
    {"question": "哪个器官分泌胰岛素？", "options": "(A) 肝脏\n(B) 胰腺\n(C) 肺部\n(D) 大脑",
     "answer": "(B)", "source": "rig-zh", "lang": "zh"},
    {"question": "Quel os est dans la cuisse ?", "options": "(A) fémur\n(B) radius\n(C) sternum\n(D) crâne\n(E) rotule",
     "answer": "(A)", "source": "rig-fr", "lang": "fr"},
    {"question": "Ni vitamini gani hupatikana kwenye machungwa?", "options": "(A) chuma\n(B) kalsiamu\n(C) sukari\n(D) asidi askobiki",
     "answer": "(D)", "source": "rig-sw", "lang": "sw"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  c = _config()
  path = tmp_path_factory.mktemp("rig") / "rig.jsonl"
  path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in ITEMS), encoding="utf-8")
  items, _ = mcq.load([str(path)])
  # The model prefers option C of the English item (wrong) and the gold option of the others.
  preferred = ["C" if it.lang == "en" else it.answer for it in items]
  run = cfg_lib.resolve(c)
  probe = LanguageModel.from_params(run, _rigged(c, set()), mesh=_mesh(c, 1), batch_size=4)
  tokens = {}  # (item, letter) -> continuation token ids
  for i, it in enumerate(items):
    for (ctx, cont), (letter, _) in zip(mcq.loglikelihood_requests(it), it.options):
      tokens[i, letter] = probe._split(ctx, cont)[1]
  # Boost the preferred options' tokens that no other option has: a preferred option then has
  # fewer unboosted tokens (each ~ALPHA cheaper) than any of its rivals.
  rivals = set().union(*(v for (i, l), v in tokens.items() if l != preferred[i]))
  boosted = set().union(*(tokens[i, p] for i, p in enumerate(preferred))) - rivals
  for i, p in enumerate(preferred):
    unboosted = sum(t not in boosted for t in tokens[i, p])
    assert all(len(tokens[i, l]) > unboosted for l in items[i].letters if l != p)
  return c, items, preferred, boosted, tokens


def _mesh(c, n, **axes):
  c = c.copy_and_resolve_references()
  c.mesh.update({**dict(data=1, fsdp=1, expert=1, tensor=1), **axes})
  return sharding.make_mesh(c, jax.devices()[:n])


def test_loglikelihood_picks_the_option_the_rigged_model_prefers(setup):
  c, items, preferred, boosted, tokens = setup
  lm = LanguageModel.from_params(cfg_lib.resolve(c), _rigged(c, boosted), mesh=_mesh(c, 1),
                                 batch_size=4)
  recs = mcq.score_loglikelihood(items, lm.loglikelihood)
  assert [r["pred"] for r in recs] == preferred
  for r, it, p in zip(recs, items, preferred):
    assert r["correct"] == (p == it.answer)
    # The exact sums: the continuation tokens, no more, no fewer.
    expected = [_expected_logprob(tokens[items.index(it), l], boosted, c.model.vocab_size)
                for l in it.letters]
    np.testing.assert_allclose(r["logprobs"], expected, rtol=1e-5, atol=2e-3)
  s = mcq.summarize(recs)
  assert s["per_language"]["en"]["acc"] == 0.0
  assert s["per_language"]["zh"]["acc"] == s["per_language"]["fr"]["acc"] == 1.0
  assert s["major_average"] == pytest.approx(2 / 3) and s["minor_average"] == 1.0

  # Rolling log-likelihood: every token predicted once, whatever the window (the rigged model
  # ignores context, so windows of 8 tokens give the same sum as one pass).
  text = items[0].question + " " + items[1].question
  ids = lm.tokenizer.encode(text)
  want = _expected_logprob(ids, boosted, c.model.vocab_size)
  (full,) = lm.loglikelihood_rolling([text], max_len=2048)
  (windows,) = lm.loglikelihood_rolling([text], max_len=8)
  (ll, greedy), = lm.loglikelihood([("", text)])
  np.testing.assert_allclose([full, windows, ll], [want] * 3, rtol=1e-5)
  assert not greedy

  # Greedy generation: the rigged model emits the first boosted id again and again.
  first = min(boosted)
  piece = lm.tokenizer.decode([first])
  out = lm.generate_until([("Question:", ["\n\n\n"], 3), ("Question:", [piece * 2], 3)])
  assert out[0] == lm.tokenizer.decode([first] * 3)
  assert out[1] == ""  # cut before the first stop string


def test_sharded_scoring_equals_single_device(setup):
  c, items, _, boosted, _ = setup
  params = _rigged(c, boosted)
  # Perturb the rigged params so that context matters and sharding shows up in the numbers.
  rng = np.random.RandomState(1)
  blocks = params["segments"][0]["blocks"]
  blocks["attn"]["o_proj"]["kernel"] = rng.randn(*blocks["attn"]["o_proj"]["kernel"].shape).astype(np.float32) * 0.3
  blocks["ffn"]["down_proj"]["kernel"] = rng.randn(*blocks["ffn"]["down_proj"]["kernel"].shape).astype(np.float32) * 0.3
  run = cfg_lib.resolve(c)
  one = LanguageModel.from_params(run, params, mesh=_mesh(c, 1), batch_size=4)
  eight = LanguageModel.from_params(run, params, mesh=_mesh(c, 8, data=4, tensor=2), batch_size=4)
  assert eight.params["segments"][0]["blocks"]["ffn"]["up_proj"]["kernel"].sharding.spec[-1] == "tensor"
  reqs = [r + (items[0].lang,) for r in mcq.loglikelihood_requests(items[0])]
  a = np.asarray([x for x, _ in one.loglikelihood(reqs)])
  b = np.asarray([x for x, _ in eight.loglikelihood(reqs)])
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  assert np.std(a) > 0.1


def test_heldout_split_is_the_runs_own_validation_split(tmp_path):
  """Perplexity's held-out text is built from the run's data config (here every 4th record),
  so it equals the validation split the run held out and shares no record with its train split."""
  from medmoe_jax.data import corpus
  from medmoe_jax.evaluation import perplexity
  c = load_config("post_moe")
  c.data.validation_every = 4
  heldout = perplexity.heldout_source(cfg_lib.resolve(c).data, str(tmp_path / "eval_data"))
  run_splits = corpus.load_splits(cfg_lib.data_spec(c, str(tmp_path / "run")), log=lambda *_: None)
  assert heldout.lang_counts() == run_splits["validation"].lang_counts()
  texts = lambda src: {src[i]["text"] for i in range(len(src))}
  assert texts(heldout) == texts(run_splits["validation"])
  assert not texts(heldout) & texts(run_splits["train"])
  c.data.validation_every = 10  # the default keeps fewer records back
  fewer = perplexity.heldout_source(cfg_lib.resolve(c).data, str(tmp_path / "eval_data"))
  assert len(fewer) < len(heldout)
