"""Greedy decoding with a KV cache == recomputing the full forward at every step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax import generate as gen
from medmoe_jax.data.tokenizer import load_tokenizer
from medmoe_jax.model import Transformer


@functools.cache
def _model():
  """Dense layer + MoE layer with hard language routing (decode steps must carry each row's
  language), the sample tokenizer's vocabulary."""
  c = load_config("post_moe")
  # A large init spreads the logits, so argmax ties (which float reassociation could flip) are
  # not an issue for a random model.
  c.model.update(dict(vocab_size=4096, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      d_ff=64, init_std=0.3))
  c.moe.layers, c.moe.language_routing = "last:1", "hard"
  # Capacity C = S: no token is ever dropped, in the full forward as in one-token steps (a
  # capacity backend that drops would make the two differ by design, not by the cache).
  c.moe.capacity_factor_eval = 8.0
  return _init(cfg_lib.model_spec(c), 1)


def _init(spec, seed):
  """(graphdef, pure-dict params), initialised in one jitted call (eager init is slow)."""
  graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(seed))), nnx.Param)[0]
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(spec, rngs=nnx.Rngs(seed)),
                                                       nnx.Param)))()
  return graphdef, params


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _next_tokens(graphdef, params, tokens, seg, pos, lang, last):
  logits, _ = nnx.merge(graphdef, params)(tokens, seg, pos, lang)
  return jnp.argmax(logits[jnp.arange(tokens.shape[0]), last], axis=-1)


def _reference(graphdef, params, prompts, langs, n, eos_id):
  """No cache: the whole sequence through the training forward for every new token. Rows are
  left-padded prompts followed by the generated tokens and right padding (segment 0, invisible
  to the real tokens), so one shape serves every step."""
  p = max(len(x) for x in prompts)
  arrays = gen.left_pad(prompts, p, len(prompts), langs)
  lengths = arrays[4]
  tok, seg, pos, lang = (np.concatenate([a, np.full((len(prompts), n), fill, np.int32)], axis=1)
                         for a, fill in zip(arrays[:4], (0, 0, 0, -1)))
  out = [[] for _ in prompts]
  done = [False] * len(prompts)
  for t in range(n):
    nxt = np.asarray(_next_tokens(graphdef, params, tok, seg, pos, lang, np.full(len(prompts), p + t - 1)))
    for r in range(len(prompts)):
      if done[r] or nxt[r] == eos_id:
        done[r] = True
        continue
      out[r].append(int(nxt[r]))
      tok[r, p + t], seg[r, p + t], pos[r, p + t], lang[r, p + t] = nxt[r], 1, lengths[r] + t, langs[r]
  return out


def test_kv_cache_decoding_equals_full_recompute():
  graphdef, params = _model()
  r = np.random.RandomState(0)
  prompts = [r.randint(4, 4096, size=k).tolist() for k in (5, 11, 3, 17, 8)]
  langs = [0, 3, 5, -1, 11]
  n = 10
  # Batch 4 over 5 prompts: two batches, the second with filler rows; every prompt is
  # left-padded to 32 (one compiled shape), more than the reference pads.
  got = gen.generate(graphdef, params, prompts, max_new_tokens=n, eos_id=3, lang_ids=langs,
                     batch_size=4, bucket=32)
  ref = _reference(graphdef, params, prompts, langs, n, eos_id=3)
  assert got == ref
  assert sum(len(g) for g in got) > n
  # The language of a row matters to hard routing, in the prompt and in every decoded step.
  other = gen.generate(graphdef, params, prompts, max_new_tokens=n, eos_id=3,
                       lang_ids=[11, 0, 3, 5, 0], batch_size=4, bucket=32)
  assert other != got


def test_eos_stops_a_row():
  graphdef, params = _model()  # cached: the model of the test above
  prompts = [[5, 6, 7], [9, 10]]
  kw = dict(max_new_tokens=10, batch_size=4, bucket=32)  # the shape compiled by the test above
  full = gen.generate(graphdef, params, prompts, eos_id=-1, **kw)
  eos = full[0][2]  # pretend the row's third token is EOS
  got = gen.generate(graphdef, params, prompts, eos_id=eos, **kw)
  assert got == [f[:f.index(eos)] if eos in f else f for f in full]
  assert len(got[0]) <= 2


def test_min_new_tokens_masks_eos_at_the_start():
  """min_new_tokens=2 (the official evaluation's): EOS cannot be the first or second new token;
  the row then continues with the best other token."""
  graphdef, params = _model()
  prompts = [[5, 6, 7], [9, 10]]
  kw = dict(max_new_tokens=10, batch_size=4, bucket=32)
  full = gen.generate(graphdef, params, prompts, eos_id=-1, **kw)
  eos = full[0][0]  # pretend the row's first token is EOS
  assert gen.generate(graphdef, params, prompts, eos_id=eos, **kw)[0] == []
  got = gen.generate(graphdef, params, prompts, eos_id=eos, min_new_tokens=2, **kw)
  assert len(got[0]) >= 2 and got[0][0] != eos and eos not in got[0][:2]
  # Past the first two tokens, EOS stops the row as before.
  assert all(eos not in g for g in got)


def test_stop_at_first_line_keeps_the_scored_line():
  """Stopping after the first non-empty line returns a prefix of the unstopped output whose
  first non-empty line is the same."""
  tok = load_tokenizer("sample")
  graphdef, params = _model()
  table = gen.line_stop_tables(tok, 4096)
  nl = [i for i in range(tok.vocab_size) if tok.decode([i]) == "\n"][0]
  # Bias the model toward newlines so lines end within the budget.
  params = jax.tree.map(lambda x: x, params)  # a copy: the cached model stays as it is
  params["embed"]["embedding"] = params["embed"]["embedding"].at[nl].multiply(4.0)
  prompts = [[2] + tok.encode(s) for s in ("Question: fever?\n", "Вопрос:\n\n", "问题：")]
  never = np.zeros_like(table)  # same shapes, one compile: a table that never stops
  kw = dict(max_new_tokens=24, eos_id=tok.eos_id, lang_ids=[0, 6, 1], batch_size=4, bucket=32)
  full = gen.generate(graphdef, params, prompts, stop_table=never, **kw)
  short = gen.generate(graphdef, params, prompts, stop_table=table, **kw)

  def first_line(text):
    return next((line for line in text.split("\n") if line), text) if "\n" in text else text

  stopped = 0
  for f, s in zip(full, short):
    assert f[:len(s)] == s
    assert first_line(tok.decode(s)) == first_line(tok.decode(f))
    stopped += len(s) < len(f)
  assert stopped > 0
