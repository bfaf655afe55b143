"""A trained checkpoint as a language model for evaluation: load, score, generate.

    lm = LanguageModel.load("workdir/post_moe")            # latest step; or .../checkpoints/300
    lm.loglikelihood([(context, continuation, lang), ...]) -> [(logprob, is_greedy), ...]
    lm.loglikelihood_rolling([text, ...], lang)            -> [logprob, ...]
    lm.generate([(prompt_ids, lang), ...], max_new_tokens)  -> [text, ...]
    lm.generate_until([(context, until, max_tokens, lang), ...]) -> [text, ...]
    lm.token_scores(batch)                                 -> next-token log-probs (+ routing)

Everything runs batched and jitted, with the parameters restored directly into their shardings
on a mesh (the same (data, fsdp, expert, tensor) meshes as training) and batches sharded over
the batch axes. The checkpoint's own config.json rebuilds the model, so any run evaluates without
repeating its flags. Shapes are bucketed (64, 128, 256, ... tokens) so few programs compile.

Requests are tokenized as lm-evaluation-harness 0.4.1 (MoE-LPR's pinned version) tokenizes them
for a causal LM: no BOS for any tokenizer, EOS where a context is empty and before a rolling text
(`request_ids`). The Apollo MCQ prompts have their own rule (BOS where the tokenizer has one,
evaluation/apollo.py) and held-out perplexity scores documents as training rows hold them
(evaluation/perplexity.py).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from medmoe_jax import config as cfg_lib
from medmoe_jax import generate as gen_lib
from medmoe_jax import sharding
from medmoe_jax.checkpoint import Checkpointer, abstract_with_shardings, read_run_config
from medmoe_jax.data.tokenizer import load_tokenizer
from medmoe_jax.model import Transformer


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
  """A training workdir, its checkpoints/ directory, or one step's directory -> (workdir, step
  or None for the latest)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config.checkpoint: {path} is not a directory; pass a training "
                            "workdir (config.json + checkpoints/) or one of its checkpoints/<step>")
  if os.path.isfile(os.path.join(path, "config.json")):
    return path, None
  parent, name = os.path.dirname(path), os.path.basename(path)
  if os.path.basename(parent) == "checkpoints" and name.isdigit():
    return os.path.dirname(parent), int(name)
  if name == "checkpoints":
    return parent, None
  raise FileNotFoundError(f"config.checkpoint: {path} holds no config.json; pass a training "
                          "workdir (config.json + checkpoints/) or one of its checkpoints/<step>")


def checkpoint_steps(workdir: str) -> list[int]:
  """Finished checkpoint steps of a run, ascending (read-only: safe beside a training job)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(Checkpointer(directory, read_only=True).all_steps())


def bucket_length(n: int, minimum: int = 64) -> int:
  """64, 128, 256, ...: the padded length for n tokens."""
  length = minimum
  while length < n:
    length *= 2
  return length


_STOP_TABLES: dict = {}


def _fetch(x):
  """A (possibly sharded, possibly multi-process) array -> numpy on every process."""
  if x is None:
    return None
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


@functools.partial(jax.jit, static_argnames=("graphdef", "routing"))
def _token_scores(graphdef, params, tokens, segment_ids, positions, lang_ids, targets, *,
                  routing: bool):
  """Next-token log-probabilities lp[b, t] = log p(targets[b, t+1] | tokens[b, :t+1]) and
  whether that token is the argmax; with routing, also each token's experts at each MoE layer.
  The prefill path (`Transformer.decode` into a fresh cache) equals the training forward and is
  the one that can report routing."""
  model = nnx.merge(graphdef, params)
  b, s = tokens.shape
  logits, _, aux = model.decode(tokens, segment_ids, positions, lang_ids, model.init_cache(b, s),
                                0, return_routing=routing)
  nxt = jnp.concatenate([targets[:, 1:], jnp.zeros_like(targets[:, :1])], axis=1)
  lse = jax.nn.logsumexp(logits, axis=-1)
  lp = jnp.take_along_axis(logits, nxt[..., None], axis=-1)[..., 0] - lse
  greedy = jnp.argmax(logits, axis=-1) == nxt
  extra = {k: aux[k] for k in ("expert_indices", "router_probs", "dropped_fraction") if k in aux}
  return lp, greedy, extra


@dataclasses.dataclass
class LanguageModel:
  run: cfg_lib.Run          # the run's config (its config.json), resolved: the model's specs
  graphdef: object
  params: dict
  tokenizer: object
  step: int
  workdir: str
  mesh: object
  batch_size: int = 8

  @property
  def spec(self):
    return self.run.model

  @property
  def languages(self) -> list[str]:
    """The run's languages in lang_id order."""
    return list(self.run.languages)

  # --- Loading.

  @classmethod
  def load(cls, checkpoint: str, *, step: int | None = None, mesh=None, mesh_config=None,
           batch_size: int = 8, overrides: dict | None = None) -> "LanguageModel":
    """checkpoint: a training workdir or one of its checkpoints/<step> directories. mesh: a
    jax Mesh, or built from mesh_config (axis -> size, like config.mesh; default: all devices
    data-parallel). overrides: {"moe.backend": ..., "moe.capacity_factor_eval": ...} applied to
    the run's config (inference-only settings; the parameters must still fit)."""
    workdir, path_step = resolve_checkpoint(checkpoint)
    step = path_step if step is None or step < 0 else step
    c = read_run_config(workdir)
    with c.unlocked():
      for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = c
        for part in parents:
          node = node[part]
        node[leaf] = value
    if mesh is None:
      # The eval mesh, checked by the config validation against this model (experts, heads,
      # widths must divide their axes) as if the run had been configured with it.
      c = c.copy_and_resolve_references()
      with c.unlocked():
        if mesh_config is not None:
          c.mesh = mesh_config
        shape = cfg_lib.mesh_shape(c, jax.device_count())
        shards = shape["data"] * shape["fsdp"] * shape["expert"]
        c.data.batch_size = -(-max(1, batch_size) // shards) * shards
      run = cfg_lib.resolve(c, num_devices=jax.device_count())
      mesh = sharding.mesh_of_shape(run.mesh_shape)
    else:
      run = cfg_lib.resolve(c)
    abstract = nnx.eval_shape(lambda: _transformer(run.model))
    graphdef, aparams = nnx.split(abstract, nnx.Param)
    shardings = sharding.state_shardings(aparams, mesh)
    target = abstract_with_shardings(nnx.to_pure_dict(aparams), shardings)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
      params, step = ckpt.restore_params(target, step)
    finally:
      ckpt.close()
    return cls.from_params(run, params, graphdef=graphdef, step=int(step), workdir=workdir,
                           mesh=mesh, batch_size=batch_size)

  @classmethod
  def from_params(cls, run: cfg_lib.Run, params, *, graphdef=None, step: int = 0,
                  workdir: str = "", mesh=None, batch_size: int = 8) -> "LanguageModel":
    """A model already in memory (e.g. from a training loop): run is the run's resolved config
    (`config.resolve`; with num_devices when no mesh is given), params its pure-dict parameters
    (placed on `mesh`'s shardings if they are not)."""
    if graphdef is None:
      abstract = nnx.eval_shape(lambda: _transformer(run.model))
      graphdef, aparams = nnx.split(abstract, nnx.Param)
      if mesh is None:
        if not run.mesh_shape:
          raise ValueError("LanguageModel.from_params: pass a mesh, or a run resolved with "
                           "num_devices (config.resolve(c, num_devices=...))")
        mesh = sharding.mesh_of_shape(run.mesh_shape)
      params = jax.device_put(params, sharding.state_shardings(aparams, mesh))
    shards = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
    batch_size = -(-max(1, batch_size) // shards) * shards
    return cls(run, graphdef, params, load_tokenizer(run.data.tokenizer), int(step), workdir,
               mesh, batch_size)

  # --- Helpers.

  def lang_index(self, code: str | None) -> int:
    return self.languages.index(code) if code in self.languages else -1

  def put(self, a: np.ndarray):
    """A host batch array (identical on every process) -> a global array sharded over batch."""
    s = NamedSharding(self.mesh, P(sharding.BATCH_AXES, *([None] * (a.ndim - 1))))
    return jax.make_array_from_callback(a.shape, s, lambda idx: a[idx])

  def token_scores(self, batch: dict) -> dict:
    """batch: numpy {tokens, segment_ids, positions, lang_ids[, targets]} [B, S] (B =
    self.batch_size; targets: what each token position is scored as, data/pipeline.py, the
    tokens themselves where absent).
    Returns numpy {"logprobs", "greedy"} [B, S] and, for a model with MoE layers,
    "expert_indices" [num_moe_layers, B, S, k], "router_probs" [num_moe_layers, B, S, E] and
    "dropped_fraction" [num_moe_layers].
    (Routing comes with every call: one program a shape serves scoring and analysis alike.)"""
    lp, greedy, extra = _token_scores(
        self.graphdef, self.params, *(self.put(np.asarray(batch[k], np.int32))
                                      for k in ("tokens", "segment_ids", "positions", "lang_ids")),
        self.put(np.asarray(batch.get("targets", batch["tokens"]), np.int32)),
        routing=bool(self.spec.moe_layer_indices))
    out = {"logprobs": _fetch(lp), "greedy": _fetch(greedy)}
    out.update({k: _fetch(v) for k, v in extra.items()})
    return out

  # --- Log-likelihood (lm-evaluation-harness semantics).

  def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    return request_ids(self.tokenizer, context, continuation)

  def loglikelihood(self, requests: Sequence[tuple], *, max_len: int = 2048,
                    progress=None) -> list[tuple[float, bool]]:
    """requests: (context, continuation[, lang]) -> (sum of the continuation's log-probs, whether
    every continuation token is the greedy choice). Tokens as `request_ids` makes them (no BOS;
    EOS for an empty context); sequences longer than max_len lose tokens from the left."""
    rows = []
    for r in requests:
      ctx, cont = self._split(r[0], r[1])
      if not cont:
        raise ValueError(f"loglikelihood: empty continuation for context {r[0][-40:]!r}")
      ids = ctx + cont
      rows.append((ids[-max_len:], min(len(cont), min(len(ids), max_len) - 1),
                   self.lang_index(r[2] if len(r) > 2 else None)))
    results = [None] * len(rows)
    for batch_idx, arrays in self._batches([(ids, lang) for ids, _, lang in rows]):
      scores = self.token_scores(arrays)
      for r, i in enumerate(batch_idx):
        ids, n_cont, _ = rows[i]
        span = slice(len(ids) - n_cont - 1, len(ids) - 1)
        results[i] = (float(np.sum(scores["logprobs"][r, span], dtype=np.float64)),
                      bool(np.all(scores["greedy"][r, span])))
      if progress is not None:
        progress.update(len(batch_idx))
    return results

  def loglikelihood_rolling(self, texts: Sequence[str], lang: str | None = None, *,
                            max_len: int = 2048) -> list[float]:
    """Log-probability of each whole text, conditioned on EOS (lm-evaluation-harness 0.4.1's
    prefix, for every tokenizer: `request_ids`), every token predicted once, in windows of at
    most max_len tokens (the harness's rolling windows: each window after the first is
    right-aligned to keep a full max_len context)."""
    li = self.lang_index(lang)
    windows, owner = [], []
    for t, text in enumerate(texts):
      ids = [self.tokenizer.eos_id] + self.tokenizer.encode(text)  # the harness's eot prefix
      start = 1  # ids[start:end] are the targets of the next window
      while start < len(ids):
        end = min(start + max_len - 1, len(ids))
        seq = ids[max(0, end - max_len):end]
        windows.append((seq, end - start, li))
        owner.append(t)
        start = end
    totals = np.zeros(len(texts), np.float64)
    for batch_idx, arrays in self._batches([(seq, li) for seq, _, li in windows]):
      scores = self.token_scores(arrays)
      for r, i in enumerate(batch_idx):
        seq, k, _ = windows[i]
        span = slice(len(seq) - 1 - k, len(seq) - 1)
        totals[owner[i]] += float(np.sum(scores["logprobs"][r, span], dtype=np.float64))
    return totals.tolist()

  def _batches(self, seqs: Sequence[tuple[list[int], int]]):
    """Right-padded batches of (ids, lang) sorted by length (longest first): yields (indices,
    {tokens, segment_ids, positions, lang_ids})."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    b = self.batch_size
    for start in range(0, len(order), b):
      idx = order[start:start + b]
      length = bucket_length(max(len(seqs[i][0]) for i in idx))
      arrays = {k: np.zeros((b, length), np.int32) for k in ("tokens", "segment_ids", "positions")}
      arrays["lang_ids"] = np.full((b, length), -1, np.int32)
      for r, i in enumerate(idx):
        ids, li = seqs[i]
        n = len(ids)
        arrays["tokens"][r, :n] = ids
        arrays["segment_ids"][r, :n] = 1
        arrays["positions"][r, :n] = np.arange(n)
        arrays["lang_ids"][r, :n] = li
      yield idx, arrays

  # --- Generation.

  @property
  def _stop_table(self):
    key = (getattr(self.tokenizer, "name", id(self.tokenizer)), self.tokenizer.vocab_size,
           self.spec.vocab_size)
    if key not in _STOP_TABLES:  # one decode per vocabulary entry: once per tokenizer
      _STOP_TABLES[key] = gen_lib.line_stop_tables(self.tokenizer, self.spec.vocab_size)
    return _STOP_TABLES[key]

  def generate(self, prompts: Sequence[tuple[list[int], str | None]], *, max_new_tokens: int,
               min_new_tokens: int = 0, stop_at_line: bool = False, progress=None) -> list[str]:
    """Greedy continuations (decoded text) of (prompt ids, lang) pairs."""
    ids = [p for p, _ in prompts]
    langs = [self.lang_index(l) for _, l in prompts]
    pad = self.tokenizer.pad_id
    out = gen_lib.generate(self.graphdef, self.params, ids, max_new_tokens=max_new_tokens,
                           eos_id=self.tokenizer.eos_id, pad_id=0 if pad is None else pad,
                           min_new_tokens=min_new_tokens, lang_ids=langs, batch_size=self.batch_size, bucket=bucket_length,
                           stop_table=self._stop_table if stop_at_line else None,
                           put=self.put, fetch=_fetch, progress=progress)
    return [self.tokenizer.decode(o) for o in out]

  def generate_until(self, requests: Sequence[tuple], *, default_max_tokens: int = 256) -> list[str]:
    """requests: (context, until strings, max new tokens or None[, lang]) -> the greedy
    continuation cut before the first `until` string (lm-evaluation-harness semantics: the
    context's ids without BOS, EOS for an empty one)."""
    out = [None] * len(requests)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(requests):
      groups.setdefault(int(r[2] or default_max_tokens), []).append(i)
    for n, idx in groups.items():
      prompts = [(self.tokenizer.encode(requests[i][0]) or [self.tokenizer.eos_id],
                  requests[i][3] if len(requests[i]) > 3 else None) for i in idx]
      texts = self.generate(prompts, max_new_tokens=n)
      for i, text in zip(idx, texts):
        until = [u for u in (requests[i][1] or []) if u]
        if until:
          text = re.split("|".join(re.escape(u) for u in until), text, maxsplit=1)[0]
        out[i] = text
    return out


def request_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """Token ids of a log-likelihood request (context, continuation) as lm-evaluation-harness 0.4.1
  (the version MoE-LPR's environment pins; `HFLM._encode_pair` and `loglikelihood`) makes them
  for a causal LM: no BOS or other special token for any tokenizer (Llama's has one, Qwen2's has
  none; neither is added); whitespace ending the context moves to the continuation; the
  continuation is the whole string's ids after as many ids as the context alone has; an empty
  context is the EOS token. ApolloMoE scores by generation only (evaluation/apollo.py)."""
  if not context:
    return [tokenizer.eos_id], tokenizer.encode(continuation)
  n = len(context) - len(context.rstrip())
  if n:
    context, continuation = context[:-n], context[-n:] + continuation
  whole = tokenizer.encode(context + continuation)
  ctx = tokenizer.encode(context)
  return ctx, whole[len(ctx):]


def _transformer(spec):
  return Transformer(spec, rngs=nnx.Rngs(0))

