"""The method configs, each trained for a few steps on the embedded sample the way its paper
starts (shared by test_method_configs.py and test_freeze.py, computed once per process):

  dense base (random, saved)  -> post_moe, hybrid_k12, language_specific (Apollo upcycling)
                              -> moe_lpr_stage1 (LPR upcycling) -> moe_lpr_stage2 (params only)
                              -> moe_ct (appended blocks)

Compile time dominates these runs (one init + one train step per config), so the models have 2
layers (post_moe keeps a dense layer before its MoE layer: moe.layers="last:1"), and the runs use
the "rbg" PRNG, whose init compiles about twice as fast as threefry's: what is tested here
(upcycling, freezing, losses, data) does not depend on which random bits the init draws.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax import sharding
from medmoe_jax.checkpoint import Checkpointer
from medmoe_jax.train import Trainer
from medmoe_jax.training import optim
from medmoe_jax.training.step import TrainState

STEPS = 3  # step 1 runs at lr 0 (warmup starts at 0); MoE-CT's gate opens at step 2
SOURCES = {"post_moe": "dense", "hybrid_k12": "dense", "hybrid_k12_all": "dense",
           "language_specific": "dense", "language_specific_official": "dense",
           "moe_lpr_stage1": "dense", "moe_lpr_stage2": "moe_lpr_stage1", "moe_ct": "dense"}

_root = None
_cache: dict = {}


@dataclasses.dataclass
class Run:
  config: object
  workdir: str
  initial: dict           # params right after initialisation (upcycled / loaded)
  final: dict             # params after STEPS steps
  history: list           # metrics.jsonl records
  labels: dict            # freeze labels ("frozen" / "trainable")
  frozen_experts: tuple   # expert ids frozen in every MoE layer


def root() -> str:
  global _root
  if _root is None:
    _root = tempfile.mkdtemp(prefix="medmoe_methods_")
    atexit.register(shutil.rmtree, _root, True)
  return _root


def tiny(name: str, source: str = ""):
  c = load_config(name)
  c.model.update(dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64))
  if name == "post_moe":
    c.moe.layers = "last:1"  # the Post-MoE layout at 2 layers: dense, then MoE
  c.data.update(dict(seq_len=64, batch_size=8, data_dir=os.path.join(root(), "data")))
  c.train.update(dict(steps=STEPS, log_every=1, checkpoint_every=STEPS, warmup_frac=0.0,
                      async_checkpoint=False))
  c.upcycle["from"] = source
  return c


def _dense_base() -> str:
  """A dense checkpoint in the shape a workdir has (config.json + checkpoints/0)."""
  workdir = os.path.join(root(), "dense")
  c = tiny("dense")
  params = random_params(cfg_lib.model_spec(c), seed=7, std=0.05)
  ck = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ck.save(0, TrainState(jnp.zeros((), jnp.int32), params, {}), {})
  ck.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(cfg_lib.to_json(c))
  return workdir


def get(name: str) -> Run:
  """The run of config `name` (and of the runs it starts from), computed once."""
  if name in _cache:
    return _cache[name]
  if name == "dense":
    _cache[name] = _dense_base()
    return _cache[name]
  src = get(SOURCES[name])
  source = src if isinstance(src, str) else src.workdir
  c = tiny(name, source)
  workdir = os.path.join(root(), name)
  with jax.default_prng_impl("rbg"):
    t = Trainer(c, workdir, mesh=sharding.make_mesh(c, jax.devices()[:1])).setup()
    initial = jax.device_get(t.initial_state()[0].params)
    final = jax.device_get(t.run(progress=False).params)
    t.close()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    history = [json.loads(line) for line in f]
  _, experts = optim.expand_freeze(initial, cfg_lib.freeze_items(c), cfg_lib.frozen_experts(c))
  _cache[name] = Run(c, workdir, initial, final, history, t.labels, experts)
  return _cache[name]


def random_params(spec, seed: int, std: float = 0.08, router_std: float = 0.5) -> dict:
  """Params of `spec` drawn with numpy (no compile): weights N(0, std), routers N(0, router_std),
  norm scales 1 + N(0, 0.2), biases N(0, std) -- far enough from init that layout mistakes show."""
  from medmoe_jax import upcycle
  rng = np.random.RandomState(seed)

  def draw(path, x):
    name = optim.path_str(path)
    if name.endswith("scale"):
      return (1.0 + 0.2 * rng.standard_normal(x.shape)).astype(x.dtype)
    s = router_std if name.endswith("router") else std
    return (s * rng.standard_normal(x.shape)).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(draw, upcycle.abstract_params(spec))


def dense_params() -> dict:
  from medmoe_jax import upcycle
  workdir = get("dense")
  spec = cfg_lib.model_spec(tiny("dense"))
  return upcycle.load_params(workdir, upcycle.abstract_params(spec))[0]
