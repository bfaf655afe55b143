"""Freezing: after N real train steps of each method config (method_runs.py) every frozen
parameter and frozen expert slice is bit-identical to its initial value, every trainable one has
moved; frozen parameters have no optimizer state; presets and regexes label the right paths."""
import jax
import numpy as np
import pytest
from flax import nnx

import method_runs
from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax.model import Transformer
from medmoe_jax.training import optim

# What each method trains (paths as "a/b/c"); everything else must stay bit-identical.
TRAINABLE = {
    "post_moe": lambda k: True,
    "moe_lpr_stage1": lambda k: k.endswith(("ffn/router", "ffn/wi_gate", "ffn/wi_up", "ffn/wo")),
    "moe_lpr_stage2": lambda k: k.endswith("ffn/router"),
    "moe_ct": lambda k: k.startswith("segments/1/"),
}


def _flat(tree):
  return {optim.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_frozen_stay_bit_identical_trainable_move(name):
  run = method_runs.get(name)
  init, fin, labels = _flat(run.initial), _flat(run.final), _flat(run.labels)
  assert run.frozen_experts == ((0,) if name == "moe_lpr_stage1" else ())
  for k in init:
    assert (labels[k] == optim.TRAINABLE) == TRAINABLE[name](k), k
    slices = [(None, init[k], fin[k])]
    if optim.EXPERT_WEIGHT_RE.search(k):  # [layers, E, ...]: judge each expert's slice
      slices = [(e, init[k][:, e], fin[k][:, e]) for e in range(init[k].shape[1])]
    for e, a, b in slices:
      if labels[k] == optim.FROZEN or e in run.frozen_experts:
        np.testing.assert_array_equal(b, a, err_msg=f"{k} expert {e} changed")
      else:
        assert np.mean(a != b) > 0.5, f"{k} expert {e} did not move"


def _params(name):
  c = load_config(name)
  c.model.update(dict(vocab_size=128, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64))
  spec = cfg_lib.model_spec(c)
  abstract = nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0)))
  return c, nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def test_no_optimizer_state_for_frozen_and_counts_printed(capsys):
  c, params = _params("moe_lpr_stage1")
  tx, labels = optim.make_optimizer(c.train, params, cfg_lib.freeze_items(c))
  opt = jax.eval_shape(tx.init, params)
  moments = [x for x in jax.tree_util.tree_leaves(opt) if x.ndim > 0]
  trainable = [k for k, v in _flat(labels).items() if v == optim.TRAINABLE]
  assert sorted(trainable) == ["segments/0/blocks/ffn/" + n for n in ("router", "wi_gate", "wi_up", "wo")]
  assert len(moments) == 2 * len(trainable)  # Adam's mu and nu for trainable leaves only
  flat = {k: v.size for k, v in _flat(jax.tree.map(lambda x: np.zeros(x.shape, np.int8), params)).items()}
  experts = sum(n for k, n in flat.items() if optim.EXPERT_WEIGHT_RE.search(k))
  n_train = flat["segments/0/blocks/ffn/router"] + experts * 3 // 4  # expert 0 of 4 frozen
  n_total = sum(flat.values())
  assert (f"parameters: {n_train:,} trainable, {n_total - n_train:,} frozen"
          in capsys.readouterr().out)


def test_presets_and_regexes_label_the_right_parameters():
  c, params = _params("moe_ct")
  patterns, experts = optim.expand_freeze(params, ["preset:ct", "fusion/kernel"])
  lab = _flat(optim.freeze_labels(params, patterns))
  assert {k for k, v in lab.items() if v == optim.TRAINABLE} == {
      k for k in lab if k.startswith("segments/1/") and k != "segments/1/fusion/kernel"}
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.make_optimizer(c.train, params, ["ffn/gate_projj"])
  c.train.freeze = "preset:nope"
  with pytest.raises(cfg_lib.ConfigError, match=r"config.train.freeze: unknown preset 'nope'"):
    cfg_lib.validate(c)
  c.train.freeze = "("
  with pytest.raises(cfg_lib.ConfigError, match=r"config.train.freeze: bad regex"):
    cfg_lib.validate(c)
  c.train.freeze = ""
  c.train.freeze_experts = "4"
  with pytest.raises(cfg_lib.ConfigError, match=r"config.train.freeze_experts: expert 4 is out of range"):
    cfg_lib.validate(c)
