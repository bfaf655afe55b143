"""MoE-LPR's freezing, proven on the model's output: the stage-1 model (trained a few real steps
from a dense base, method_runs.py) with expert 0 forced at weight 1 on original-language tokens
has exactly the base model's perplexity on them. Whatever stage 1 did to the new experts and the
routers, the original FFN is intact; stage 2 only has to learn to route there.

The controls show the comparison can fail: forcing a new expert, the learned routing, or a stage
1 that let expert 0 move (its slice nudged by 1e-3) each give another perplexity."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import method_runs
from medmoe_jax import config as cfg_lib
from medmoe_jax.data import sources, tokenizer
from medmoe_jax.model import Transformer

ORIGINAL = ("en", "zh", "es")  # the base's languages; stage 1 trains on sw, ha, mg
SEQ = 64


def _batch(vocab: int):
  """Held-out original-language text: every 10th document of en, zh, es (the validation split),
  in rows of SEQ tokens (BOS + SEQ - 1 tokens of a document)."""
  tok = tokenizer.load_tokenizer("sample")
  rows = []
  for path in sources.sample_files():
    recs = list(sources.read_jsonl(path))
    if recs[0]["lang"] in ORIGINAL:
      for r in recs[::10]:
        ids = tok.encode(r["text"])
        rows += [ids[i:i + SEQ - 1] for i in range(0, len(ids), SEQ - 1)]
  tokens = np.zeros((len(rows), SEQ), np.int32)
  seg = np.zeros_like(tokens)
  for i, ids in enumerate(rows):
    ids = [tok.bos_id] + ids
    tokens[i, :len(ids)] = ids
    seg[i, :len(ids)] = 1
  assert tokens.max() < vocab and seg.sum() > 500
  pos = np.broadcast_to(np.arange(SEQ, dtype=np.int32), tokens.shape).copy()
  lang = np.where(seg > 0, 0, -1).astype(np.int32)  # every real token: language 0 -> expert 0
  return dict(tokens=tokens, segment_ids=seg, positions=pos, lang_ids=lang)


@functools.partial(jax.jit, static_argnums=0)
def _nll(spec, params, b):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))))
  logits, _ = nnx.merge(graphdef, params)(b["tokens"], b["segment_ids"], b["positions"],
                                          b["lang_ids"], train=False)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  nll = -jnp.take_along_axis(logp, b["tokens"][:, 1:, None], axis=-1)[..., 0]
  mask = (b["segment_ids"][:, 1:] > 0) & (b["segment_ids"][:, :-1] > 0)
  return jnp.sum(nll * mask) / jnp.sum(mask)


def _ppl(spec, params, batch) -> float:
  return float(np.exp(np.float64(_nll(spec, params, batch))))


@pytest.fixture(scope="module")
def models():
  stage1 = method_runs.get("moe_lpr_stage1")
  dense_c = method_runs.tiny("dense")
  dense_spec = cfg_lib.model_spec(dense_c)
  dense_params = method_runs.random_params(dense_spec, seed=7, std=0.05)  # method_runs' base
  spec = cfg_lib.model_spec(stage1.config)
  assert spec.moe.num_experts == 4 and spec.moe_layer_indices == (0, 1)
  batch = {k: jnp.asarray(v) for k, v in _batch(spec.vocab_size).items()}
  return dense_spec, dense_params, spec, stage1, batch


def _forced(spec, expert: int, mode: str = "hard"):
  """The stage-1 model with every language-0 token sent to `expert` at weight 1 (hard routing);
  mode "none": the routing stage 1 learned (top-2, renormalised)."""
  moe = dataclasses.replace(spec.moe, language_routing=mode, backend="dense",
                            lang_to_expert=(expert,) if mode == "hard" else ())
  return dataclasses.replace(spec, moe=moe)


def test_stage1_with_expert0_forced_is_the_base_model(models):
  dense_spec, dense_params, spec, stage1, batch = models
  # Stage 1 did train: the new experts and the routers moved (test_freeze.py checks each slice).
  ffn0, ffn1 = stage1.initial["segments"][0]["blocks"]["ffn"], stage1.final["segments"][0]["blocks"]["ffn"]
  assert not np.array_equal(ffn0["router"], ffn1["router"])
  assert not np.array_equal(ffn0["wi_gate"][:, 1:], ffn1["wi_gate"][:, 1:])
  base = _ppl(dense_spec, dense_params, batch)
  forced = _ppl(_forced(spec, 0), stage1.final, batch)
  assert 10 < base < 1e5, base
  # On CPU the two are bit-identical (4248.5819749189895 both, at the time of writing); the
  # tolerance is a few float32 ulps, for backends that block the matmuls differently.
  assert forced == pytest.approx(base, rel=1e-6, abs=0), (forced, base)


def test_the_comparison_can_fail(models):
  dense_spec, dense_params, spec, stage1, batch = models
  base = _ppl(dense_spec, dense_params, batch)
  new_expert = _ppl(_forced(spec, 1), stage1.final, batch)
  learned = _ppl(_forced(spec, 0, "none"), stage1.final, batch)
  moved = jax.tree.map(np.array, stage1.final)
  for seg in moved["segments"].values():
    seg["blocks"]["ffn"]["wi_gate"][:, 0] += 1e-3  # as if stage 1 had trained expert 0
  expert0_moved = _ppl(_forced(spec, 0), moved, batch)
  # Measured: base 4248.58; new expert 4240.40, learned routing 4240.11, expert 0 moved 4248.16.
  for name, ppl in (("new expert", new_expert), ("learned routing", learned),
                    ("expert 0 moved", expert0_moved)):
    assert abs(ppl / base - 1) > 1e-5, (name, ppl, base)


def test_stage2_logs_expert0_probability_per_layer():
  """metrics.jsonl's expert0_prob_original: per MoE layer, the mean router probability of expert
  0 on the replayed original-language tokens (what MoE-LPR's stage 2 drives towards 1). Checked
  against the LPR loss logged beside it: mean p >= exp(mean log p) (Jensen), per layer and so on
  the layer average, and a probability."""
  run = method_runs.get("moe_lpr_stage2")
  seen = 0
  for rec in run.history:
    p = rec["expert0_prob_original"]
    assert len(p) == 2, p
    if p[0] is None:  # a log window without original-language tokens (its LPR loss is 0)
      assert p == [None, None] and rec["lpr_loss"] == 0.0 and not {"en", "zh", "es"} & set(rec["lang_loss"])
      continue
    seen += 1
    assert all(0.0 < x < 1.0 for x in p), p
    assert np.mean(p) >= np.exp(-rec["lpr_loss"]) - 1e-6, (p, rec["lpr_loss"])
  assert seen >= 1
  # Stage 1 trains on new languages only: no original tokens, no such field.
  assert all("expert0_prob_original" not in r for r in method_runs.get("moe_lpr_stage1").history)
