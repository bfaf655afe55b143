"""Greedy decoding with a KV cache.

    generate(graphdef, params, prompts, max_new_tokens=..., eos_id=...) -> list of token id lists

Prompts of a batch are left-padded to one bucketed length P (padding is segment 0, so it is
invisible to the real tokens, exactly as padding in training), prefilled into a fresh cache of
P + max_new_tokens slots in one call (`Transformer.decode`), then decoded one token a step inside
a `lax.while_loop` on the device: no host round trip per token. Every row writes the same cache
slot each step, so the cache update is one `dynamic_update_slice`; each row's positions continue
from its own prompt length.

Equivalence (tested): the tokens equal those of recomputing the full forward (`model(...)`) over
prompt + generated tokens at every step.

Stopping: a row stops at EOS or after max_new_tokens, or, with `stop_at_line=True`, once its
output holds a newline after some other character: the paper's scoring reads only the first
non-empty line of the output, so decoding past it cannot change a score and is skipped.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def line_stop_tables(tokenizer, vocab_size: int) -> np.ndarray:
  """[3, V] bool per token id, from its decoded text: (has a newline, has a character other than
  a newline, has a newline after another character). Ids past the tokenizer's vocabulary (the
  model's padded vocabulary) are all False."""
  table = np.zeros((3, vocab_size), bool)
  for i in range(min(tokenizer.vocab_size, vocab_size)):
    text = tokenizer.decode([i])
    nl = text.find("\n")
    table[0, i] = nl >= 0
    table[1, i] = any(ch != "\n" for ch in text)
    table[2, i] = nl >= 0 and any(ch != "\n" for ch in text[: text.rfind("\n")])
  return table


def _no_early_eos(logits, eos_id, t, min_new_tokens):
  """logits [B, V] of new token t (0-based): EOS masked while t < min_new_tokens (Hugging Face's
  min_new_tokens)."""
  mask = (jnp.arange(logits.shape[-1]) == eos_id) & (t < min_new_tokens)
  return jnp.where(mask[None], -jnp.inf, logits)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _generate_batch(graphdef, params, tokens, segment_ids, positions, lang_ids, lengths, row_lang,
                    active, stop_table, eos_id, pad_id, min_new_tokens, *, max_new_tokens: int):
  """tokens etc.: [B, P] left-padded prompts; lengths, row_lang: [B]; active: [B] bool (False =
  a filler row); stop_table: [3, V] bool or [3, 0] (no line stop). Returns (tokens [B, N] int32,
  pad_id after a row stopped, and counts [B]: tokens emitted per row, EOS not included)."""
  model = nnx.merge(graphdef, params)
  b, p = tokens.shape
  n = max_new_tokens
  cache = model.init_cache(b, p + n)
  logits, cache, _ = model.decode(tokens, segment_ids, positions, lang_ids, cache, 0, last_only=True)
  first = jnp.argmax(_no_early_eos(logits[:, -1], eos_id, 0, min_new_tokens),
                     axis=-1).astype(jnp.int32)
  use_lines = stop_table.shape[-1] > 0
  one = jnp.ones((b, 1), jnp.int32)

  def cond(state):
    t, _, _, _, _, done, _ = state
    return (t < n) & ~jnp.all(done)

  def body(state):
    t, tok, cache, out, count, done, content = state
    done = done | (tok == eos_id)
    out = out.at[:, t].set(jnp.where(done, pad_id, tok))
    count = count + (~done).astype(jnp.int32)
    if use_lines:
      row = stop_table[:, tok]  # [3, B]
      done = done | row[2] | (content & row[0])
      content = content | row[1]
    # A module is bound to the trace it was merged in: merge again inside the loop's trace.
    step_model = nnx.merge(graphdef, params)
    logits, cache, _ = step_model.decode(tok[:, None], one, (lengths + t)[:, None],
                                         row_lang[:, None], cache, p + t, last_only=True)
    nxt = jnp.argmax(_no_early_eos(logits[:, -1], eos_id, t + 1, min_new_tokens),
                     axis=-1).astype(jnp.int32)
    return t + 1, nxt, cache, out, count, done, content

  out = jnp.full((b, n), pad_id, jnp.int32)
  state = (jnp.zeros((), jnp.int32), first, cache, out, jnp.zeros((b,), jnp.int32), ~active,
           jnp.zeros((b,), bool))
  _, _, _, out, count, _, _ = jax.lax.while_loop(cond, body, state)
  return out, count


def left_pad(prompts: Sequence[Sequence[int]], length: int, rows: int, lang: Sequence[int]):
  """Left-padded numpy arrays [rows, length] (tokens, segment_ids, positions, lang_ids) plus
  lengths [rows] and row languages [rows]; rows beyond the prompts are empty fillers."""
  tokens = np.zeros((rows, length), np.int32)
  seg = np.zeros((rows, length), np.int32)
  pos = np.zeros((rows, length), np.int32)
  lang_ids = np.full((rows, length), -1, np.int32)
  lengths = np.zeros((rows,), np.int32)
  row_lang = np.full((rows,), -1, np.int32)
  for r, (ids, li) in enumerate(zip(prompts, lang)):
    k = len(ids)
    tokens[r, length - k:] = ids
    seg[r, length - k:] = 1
    pos[r, length - k:] = np.arange(k)
    lang_ids[r, length - k:] = li
    lengths[r], row_lang[r] = k, li
  return tokens, seg, pos, lang_ids, lengths, row_lang


def generate(graphdef, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             eos_id: int, pad_id: int = 0, min_new_tokens: int = 0,
             lang_ids: Sequence[int] | None = None,
             batch_size: int = 8, bucket: int = 64, stop_table: np.ndarray | None = None,
             put=None, fetch=None, progress=None) -> list[list[int]]:
  """Greedy continuations of `prompts` (token id lists, BOS included if wanted), in input order.

  lang_ids: per prompt, the index of its language in the model's language list (-1 = none);
  it matters only to hard language routing. Prompts are sorted by length and batched; the
  padded length is rounded up to a multiple of `bucket` (or is `bucket(longest)` when it is a
  function) so few shapes compile. stop_table: from
  `line_stop_tables` to stop at the end of the first non-empty line. min_new_tokens: EOS cannot
  be chosen before that many new tokens (Hugging Face's min_new_tokens). put: maps a numpy batch
  array to a device array (sharding); default jnp.asarray. progress: a tqdm-like bar, updated
  by the number of prompts done. fetch: device array -> numpy (default jax.device_get; several
  processes need an all-gather).
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if any(len(p) == 0 for p in prompts):
    raise ValueError("generate: an empty prompt; give at least one token (e.g. BOS)")
  lang_ids = list(lang_ids) if lang_ids is not None else [-1] * len(prompts)
  put = put or jnp.asarray
  fetch = fetch or (lambda x: np.asarray(jax.device_get(x)))
  if isinstance(params, nnx.State):  # Variables are bound to a trace; plain arrays are not
    params = nnx.to_pure_dict(params)
  table = jnp.asarray(stop_table if stop_table is not None else np.zeros((3, 0), bool))
  order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
  results: list[list[int]] = [[] for _ in prompts]
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    longest = max(len(prompts[i]) for i in idx)
    length = bucket(longest) if callable(bucket) else round_up(longest, bucket)
    arrays = left_pad([prompts[i] for i in idx], length, batch_size, [lang_ids[i] for i in idx])
    active = np.arange(batch_size) < len(idx)
    out, count = _generate_batch(graphdef, params, *(put(a) for a in arrays), put(active), table,
                                 np.int32(eos_id), np.int32(pad_id), np.int32(min_new_tokens),
                                 max_new_tokens=int(max_new_tokens))
    out, count = fetch(out), fetch(count)
    for r, i in enumerate(idx):
      results[i] = out[r, : count[r]].tolist()
    if progress is not None:
      progress.update(len(idx))
  return results
