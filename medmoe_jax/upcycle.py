"""Upcycling is param surgery: a dense model's pure param tree in, the method's MoE tree out.

One function per method (`config.upcycle.method`), each pure (no files, no randomness of its own):
  apollo  Apollo-MoE sparse upcycling: in every MoE layer each expert is a copy of that layer's
          dense FFN; attention, norms, embeddings and head are copied; the router is new.
  lpr     MoE-LPR stage 1: the same surgery over every layer (configs/moe_lpr_stage1.py sets
          moe.layers="all"); expert 0 *is* the original FFN and stays frozen (the optimizer zeroes
          its slice: train.freeze="preset:lpr_stage1"), the other experts are trainable copies.
  ct      MoE-CT, our interpretation: the base model is copied unchanged (and frozen by
          preset:ct); M MoE blocks appended after its last block come fresh from the model's
          initialiser, and their fusion gate starts closed, so the model equals the base at step 0.
New parameters (routers: normal(0, moe.router_init_std = 0.02), appended blocks) come from
`fresh`, the target model's own initialisation, so every method draws them the same way.

At step 0 an Apollo/LPR layer computes sum_k w_k * FFN(x): with moe.norm_topk=True the weights
sum to 1 and the upcycled model equals the dense one; without (Apollo-MoE's default) the layer
starts at (p1 + p2) * FFN(x), about 0.29 * FFN(x) with 7 experts.

The second half reads a source checkpoint for `config.upcycle.from` (ours, or one written by
`python -m medmoe_jax.hf import`) and turns it into the first state of a run (train.py).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from medmoe_jax import log
from medmoe_jax.errors import InputError  # a ValueError the CLIs report in one line
from medmoe_jax.model.spec import ModelSpec

_log = log.get(__name__)

# Names in the param tree (model/layers.py, model/moe.py, model/transformer.py).
DENSE_FFN = ("gate_proj", "up_proj", "down_proj")
EXPERT_FFN = ("wi_gate", "wi_up", "wo")
SHARED = ("input_norm", "attn", "post_attn_norm")


def dense_spec(spec: ModelSpec) -> ModelSpec:
  """The all-dense base model a method upcycles from (same shapes, every layer dense)."""
  return dataclasses.replace(spec, segments=(("dense", spec.num_layers),))


def _dense_layer_stack(dense: dict) -> dict:
  """All dense blocks of a dense param tree, concatenated on the leading layer axis: [L, ...]."""
  segs = [dense["segments"][k]["blocks"] for k in sorted(dense["segments"], key=int)]
  for s in segs:
    if "ffn" not in s or "gate_proj" not in s["ffn"]:
      raise InputError("upcycle: the source checkpoint has MoE layers; upcycling starts from a "
                       "dense model (for a run's own MoE checkpoint use upcycle.method='none')")
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *segs)


def _check(dense: dict, fresh: dict, spec: ModelSpec) -> dict:
  stack = _dense_layer_stack(dense)
  n = stack["input_norm"]["scale"].shape[0]
  if n != spec.num_layers:
    raise InputError(f"upcycle: the source has {n} layers, config.model.num_layers="
                     f"{spec.num_layers}; make them equal")
  for key in ("embed", "final_norm", "lm_head"):
    if (key in dense) != (key in fresh):
      raise InputError(f"upcycle: '{key}' is in only one of source and target; check "
                       "config.model.tie_embeddings against the source model")
  return stack


def _copy_top(dense: dict, fresh: dict) -> dict:
  out = {k: v for k, v in fresh.items() if k != "segments"}
  for key in ("embed", "final_norm", "lm_head"):
    if key in dense:
      out[key] = jax.tree.map(lambda d, f: d.astype(f.dtype), dense[key], fresh[key])
  return out


def _layers(stack: dict, start: int, count: int) -> dict:
  return jax.tree.map(lambda x: x[start:start + count], stack)


def _shared_from_ffn(ffn: dict, fresh_ffn: dict) -> dict:
  """The shared expert as a copy of the dense FFN (ApolloMoE's conversion); its gate stays fresh."""
  target = fresh_ffn.get("shared_expert")
  if target is None:
    raise InputError("upcycle: config.upcycle.shared_expert='dense' but the model has no shared "
                     "expert; set config.moe.shared_expert_d_ff")
  for name in DENSE_FFN:
    got, want = ffn[name]["kernel"].shape, target[name]["kernel"].shape
    if got != want:
      raise InputError(f"upcycle: dense FFN {name} {tuple(got[1:])} does not match the shared "
                       f"expert's {tuple(want[1:])}; a copied shared expert is full-size: set "
                       "config.moe.shared_expert_d_ff = model.d_ff")
  return jax.tree.map(lambda d, f: d.astype(f.dtype), {k: ffn[k] for k in DENSE_FFN}, target)


def _experts_from_ffn(ffn: dict, fresh_ffn: dict) -> dict:
  """Dense FFN [n, D, F] -> stacked experts [n, E, D, F], each a copy; router from fresh."""
  e = fresh_ffn["wi_gate"].shape[1]
  out = dict(fresh_ffn)
  for dense_name, moe_name in zip(DENSE_FFN, EXPERT_FFN):
    w = ffn[dense_name]["kernel"]
    target = fresh_ffn[moe_name]
    if w.shape[1:] != target.shape[2:]:
      raise InputError(f"upcycle: dense FFN {dense_name} {tuple(w.shape[1:])} does not match "
                       f"the experts' {tuple(target.shape[2:])}; upcycled experts are full-size "
                       "copies: set config.moe.d_ff=0 (= model.d_ff)")
    out[moe_name] = jnp.broadcast_to(w[:, None], (w.shape[0], e) + w.shape[1:]).astype(target.dtype)
  return out


def _sparse_upcycle(dense: dict, fresh: dict, spec: ModelSpec, shared_from_dense: bool = False
                    ) -> dict:
  stack = _check(dense, fresh, spec)
  out = _copy_top(dense, fresh)
  out["segments"] = {}
  start = 0
  for i, (kind, count) in enumerate(spec.segments):
    fresh_blocks = fresh["segments"][i]["blocks"]
    layer = _layers(stack, start, count)
    if kind == "dense":
      blocks = jax.tree.map(lambda d, f: d.astype(f.dtype), layer, fresh_blocks)
    elif kind == "moe":
      blocks = {k: jax.tree.map(lambda d, f: d.astype(f.dtype), layer[k], fresh_blocks[k])
                for k in SHARED}
      blocks["ffn"] = _experts_from_ffn(layer["ffn"], fresh_blocks["ffn"])
      if shared_from_dense:
        blocks["ffn"]["shared_expert"] = _shared_from_ffn(layer["ffn"], fresh_blocks["ffn"])
    else:
      raise InputError(f"upcycle: segment kind {kind!r} is not produced by sparse upcycling")
    out["segments"][i] = {**fresh["segments"][i], "blocks": blocks}
    start += count
  return out


def upcycle_apollo(dense: dict, fresh: dict, spec: ModelSpec, shared_from_dense: bool = False
                   ) -> dict:
  """Apollo-MoE: experts of every MoE layer = copies of that layer's dense FFN (and so is the
  shared expert with shared_from_dense, as ApolloMoE's conversion script makes it)."""
  return _sparse_upcycle(dense, fresh, spec, shared_from_dense)


def upcycle_lpr(dense: dict, fresh: dict, spec: ModelSpec) -> dict:
  """MoE-LPR stage 1: expert 0 = the original FFN, the others copies of it. The surgery equals
  Apollo's; what differs is that expert 0 is frozen by the optimizer (freeze_experts=0)."""
  if spec.moe.num_experts < 2:
    raise InputError("upcycle lpr: needs moe.num_experts >= 2 (expert 0 + new experts)")
  return _sparse_upcycle(dense, fresh, spec)


def upcycle_ct(dense: dict, fresh: dict, spec: ModelSpec) -> dict:
  """MoE-CT: base layers copied unchanged, appended MoE blocks fresh, fusion gate closed."""
  stack = _check(dense, fresh, spec)
  out = _copy_top(dense, fresh)
  out["segments"] = {}
  start = 0
  for i, (kind, count) in enumerate(spec.segments):
    seg = fresh["segments"][i]
    if kind == "dense":
      seg = {**seg, "blocks": jax.tree.map(lambda d, f: d.astype(f.dtype),
                                           _layers(stack, start, count), seg["blocks"])}
      start += count
    elif kind == "appended":
      # Closed gate: fused = base + 0 * (moe - base) = base, exactly.
      seg = {**seg, "fusion": jax.tree.map(jnp.zeros_like, seg["fusion"])}
    else:
      raise InputError(f"upcycle ct: segment kind {kind!r}; MoE-CT keeps base layers dense "
                       "(config.moe.layers='none') and appends MoE blocks (moe.appended)")
    out["segments"][i] = seg
  return out


UPCYCLERS = {"apollo": upcycle_apollo, "lpr": upcycle_lpr, "ct": upcycle_ct}


def upcycle(method: str, dense: dict, fresh: dict, spec: ModelSpec,
            shared_from_dense: bool = False) -> dict:
  """Pure params of the dense base model + the target's fresh init -> the target's params.
  shared_from_dense: the shared expert is a copy of the dense FFN (method "apollo" only)."""
  if method not in UPCYCLERS:
    raise InputError(f"config.upcycle.method={method!r}; choose one of {', '.join(UPCYCLERS)}")
  if shared_from_dense:
    if method != "apollo":
      raise InputError(f"config.upcycle.shared_expert='dense' applies to method 'apollo', not "
                       f"{method!r}")
    return upcycle_apollo(dense, fresh, spec, shared_from_dense=True)
  return UPCYCLERS[method](dense, fresh, spec)


# --- Reading a source checkpoint ------------------------------------------------------------

def _epath(path):
  from etils import epath
  return epath.Path(path)


def find_step_dir(path: str):
  """A workdir (has checkpoints/), a checkpoints dir (has <step>/), or a step dir (has state/)
  -> (step dir, step). The highest intact step is taken: a damaged newer one (its manifest,
  checkpoint_integrity.py) is reported in one line and skipped, never touched (it belongs to
  another run). A step dir named directly that is damaged raises DamagedCheckpointError."""
  from medmoe_jax import checkpoint_integrity as integrity

  p = _epath(path)
  if not p.exists():
    raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
  if (p / "state").is_dir():
    step = int(p.name) if p.name.isdigit() else -1
    damage = _verify_once(p)
    if damage is not None:
      raise integrity.DamagedCheckpointError(
          f"checkpoint step {step} at {p} is damaged: {damage.describe(p)}", step, damage.file)
    return p, step
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"
  steps = sorted(int(d.name) for d in p.iterdir() if d.name.isdigit() and (d / "state").is_dir())
  if not steps:
    raise FileNotFoundError(f"no checkpoint at {path}: expected a workdir with checkpoints/, a "
                            "checkpoints directory with <step>/state, or a step directory")
  for step in reversed(steps):
    damage = _verify_once(p / str(step))
    if damage is None:
      if step != steps[-1]:
        _log.info(f"using checkpoint step {step} in {p}, the newest intact one")
      return p / str(step), step
    _log.warning(integrity.damaged_message(step, p, damage.describe(p / str(step))))
  raise integrity.DamagedCheckpointError(f"no intact checkpoint at {path}: every step is damaged "
                                         f"({', '.join(map(str, steps))}; see above)")


_VERIFIED: set[str] = set()  # step dirs already checked by this process (hashing is not free)


def _verify_once(step_dir):
  from medmoe_jax import checkpoint_integrity as integrity
  if str(step_dir) in _VERIFIED:
    return None
  damage = integrity.verify(step_dir)
  if damage is None:
    _VERIFIED.add(str(step_dir))
  return damage


def find_config_json(path: str):
  """The config.json of the run a checkpoint path belongs to (workdir/config.json), or None."""
  p = _epath(path)
  for cand in (p, p.parent, p.parent.parent):
    if (cand / "config.json").is_file():
      return cand / "config.json"
  return None


def _flat(tree) -> dict:
  from medmoe_jax.training.optim import path_str
  return {path_str(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_params(path: str, abstract_params):
  """Restore only the params of the checkpoint at `path` into the structure of `abstract_params`
  (ShapeDtypeStructs; with shardings -> jax Arrays placed so, without -> numpy). Arrays are cast
  to the target dtype. Raises ValueError naming the first parameter that differs."""
  import orbax.checkpoint as ocp

  from medmoe_jax.checkpoint import _read_error
  from medmoe_jax.checkpoint_integrity import DamagedCheckpointError

  step_dir, step = find_step_dir(path)
  handler = ocp.PyTreeCheckpointHandler()

  def unreadable(e):
    cause = _read_error(e)
    if cause is None:
      return e  # a bug: keeps its traceback
    from medmoe_jax.training.faults import describe_save_error
    return DamagedCheckpointError(f"checkpoint at {step_dir} could not be read "
                                  f"({describe_save_error(cause)})", step)

  try:
    meta = handler.metadata(step_dir / "state")
  except Exception as e:  # noqa: BLE001  (filtered by unreadable)
    raise unreadable(e) from None
  tree = getattr(meta, "tree", meta)
  if "params" not in tree:
    raise InputError(f"{step_dir}: not a medmoe_jax checkpoint (no 'params' in its state)")
  have = {k: tuple(v.shape) for k, v in _flat(tree["params"]).items()}
  want = {k: tuple(v.shape) for k, v in _flat(abstract_params).items()}
  for k in sorted(want):
    if k not in have:
      raise InputError(f"{step_dir}: parameter {k} of the config is missing from the checkpoint "
                       f"(it has e.g. {sorted(have)[0]}); the checkpoint belongs to another model "
                       "layout: check config.model, config.moe.layers/appended and upcycle.method")
    if have[k] != want[k]:
      raise InputError(f"{step_dir}: parameter {k} has shape {have[k]} in the checkpoint but "
                       f"{want[k]} in the config; make config.model match the source model")
  extra = sorted(set(have) - set(want))
  if extra:
    raise InputError(f"{step_dir}: checkpoint parameter {extra[0]} has no place in the config's "
                     "model; check config.model, config.moe.layers/appended and upcycle.method")
  item = {"params": abstract_params}
  restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  try:
    restored = handler.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  except Exception as e:  # noqa: BLE001  (filtered by unreadable)
    raise unreadable(e) from None
  return restored["params"], step


def abstract_params(spec: ModelSpec, mesh=None):
  """ShapeDtypeStructs of the model's params; sharded over `mesh` when given."""
  from flax import nnx

  from medmoe_jax import sharding
  from medmoe_jax.model import Transformer

  model = nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  if mesh is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pure)
  shardings = sharding.state_shardings(state, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      pure, shardings)


def initial_params(method: str, src: str, spec: ModelSpec, fresh, mesh, param_shardings, *,
                   shared_from_dense: bool = False):
  """The first params of a run initialised from checkpoint `src` (config.upcycle["from"]): the
  source's params unchanged (method "none": e.g. MoE-LPR stage 2 from stage 1) or upcycled
  (config.upcycle.method) from a dense source. `fresh` (the run's random init, sharded)
  supplies new parameters and is consumed; shared_from_dense: a shared expert starts as a copy
  of the dense FFN (config.upcycle.shared_expert="dense")."""
  source_spec = spec if method == "none" else dense_spec(spec)
  loaded, step = load_params(src, abstract_params(source_spec, mesh))
  if method == "none":
    params = loaded
  else:
    fn = jax.jit(functools.partial(upcycle, method, spec=spec, shared_from_dense=shared_from_dense),
                 out_shardings=param_shardings, donate_argnums=(1,))
    params = fn(loaded, fresh)
  if jax.process_index() == 0:
    how = "loaded" if method == "none" else f"upcycled ({method})"
    _log.info(f"params {how} from {src} (step {step}); optimizer state fresh")
  return params

