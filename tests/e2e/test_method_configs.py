"""Every method config trains for a few steps on the embedded sample, starting the way its paper
does (see method_runs.py): Post-MoE / hybrid-k12 / language-specific upcycled from a dense
checkpoint, MoE-LPR stage 1 from it and stage 2 from stage 1's checkpoint, MoE-CT on top of it."""
import numpy as np
import pytest

import method_runs
from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax import upcycle

ALL = ["post_moe", "hybrid_k12", "hybrid_k12_all", "language_specific",
       "language_specific_official", "moe_lpr_stage1", "moe_lpr_stage2", "moe_ct"]


@pytest.mark.parametrize("name", ALL)
def test_config_trains_on_the_sample(name):
  run = method_runs.get(name)
  assert [r["step"] for r in run.history] == list(range(1, method_runs.STEPS + 1))
  assert all(np.isfinite(r["total_loss"]) for r in run.history)
  seen = set().union(*(r["lang_loss"] for r in run.history))
  assert seen and seen <= set(cfg_lib.language_list(run.config))


@pytest.mark.parametrize("name", ["post_moe", "hybrid_k12", "hybrid_k12_all", "language_specific",
                                  "language_specific_official"])
def test_apollo_configs_start_from_the_dense_ffn(name):
  run = method_runs.get(name)
  dense = method_runs.dense_params()
  moe = run.initial["segments"][len(run.initial["segments"]) - 1]["blocks"]["ffn"]
  assert moe["wi_gate"].shape[1] == load_config(name).moe.num_experts
  n = moe["wo"].shape[0]  # MoE layers are the last n: every expert a copy of their dense FFN
  for e in range(moe["wi_gate"].shape[1]):
    np.testing.assert_array_equal(moe["wo"][:, e], dense["segments"][0]["blocks"]["ffn"]["down_proj"]["kernel"][-n:])
  # Hybrid-k (training): every token's own expert is in its top-k; hard routing: top-1 = own.
  rates = run.history[-1]["own_expert_rate"]
  assert rates and all(r == 1.0 for layers in rates.values() for r in layers)


def test_moe_lpr_stage1_and_stage2():
  s1, s2 = method_runs.get("moe_lpr_stage1"), method_runs.get("moe_lpr_stage2")
  dense = method_runs.dense_params()
  assert cfg_lib.model_spec(s1.config).segments == (("moe", 2),)
  assert set(cfg_lib.language_list(s1.config)) == {"sw", "ha", "mg"}  # new languages only
  assert all(r["lb_loss"] > 0 for r in s1.history) and s1.config.moe.lb_loss_weight == 0.01
  # Expert 0 is the original FFN and still is after training; the new experts moved.
  ffn1 = s1.final["segments"][0]["blocks"]["ffn"]
  np.testing.assert_array_equal(ffn1["wi_gate"][:, 0], dense["segments"][0]["blocks"]["ffn"]["gate_proj"]["kernel"])
  assert not np.array_equal(ffn1["wi_gate"][:, 1], ffn1["wi_gate"][:, 0])
  # Stage 2 starts from stage 1's final params, exactly.
  for a, b in zip(upcycle._flat(s2.initial).values(), upcycle._flat(s1.final).values()):
    np.testing.assert_array_equal(a, b)
  assert s2.config.moe.lpr_loss_weight == 0.1 and s2.config.moe.lb_loss_weight == 0
  assert max(r["lpr_loss"] for r in s2.history) > 0
  # Replay: original-language documents are in the stage-2 data beside the new ones.
  seen = set().union(*(r["lang_loss"] for r in s2.history))
  assert seen & {"en", "zh", "es"} and seen & {"sw", "ha", "mg"}


def test_moe_ct_appends_to_the_base():
  run = method_runs.get("moe_ct")
  dense = method_runs.dense_params()
  assert cfg_lib.model_spec(run.config).segments == (("dense", 2), ("appended", 2))
  for a, b in zip(upcycle._flat(run.initial["segments"][0]).values(),
                  upcycle._flat(dense["segments"][0]).values()):
    np.testing.assert_array_equal(a, b)
  assert float(run.initial["segments"][1]["fusion"]["bias"]) == 0.0   # closed at step 0
  assert float(abs(run.final["segments"][1]["fusion"]["bias"])) > 0  # and it opened


def test_method_config_errors():
  c = load_config("moe_ct")
  c.moe.appended = 0
  with pytest.raises(cfg_lib.ConfigError, match=r"config.moe.appended: upcycle.method='ct'"):
    cfg_lib.validate(c)
  c = load_config("post_moe")
  c.moe.layers = "none"
  with pytest.raises(cfg_lib.ConfigError, match=r"config.moe.layers: upcycle.method='apollo'"):
    cfg_lib.validate(c)
  c = load_config("moe_lpr_stage2")
  c.languages.original = []
  with pytest.raises(cfg_lib.ConfigError, match=r"config.languages.original"):
    cfg_lib.validate(c)
  c = load_config("moe_lpr_stage2")
  c.data.replay_share = 1.0
  with pytest.raises(cfg_lib.ConfigError, match=r"config.data.replay_share: must be in \[0, 1\)"):
    cfg_lib.validate(c)


def test_replay_share_rescales_the_mixture():
  from medmoe_jax.data.pipeline import mixture_weights, replay_weights
  w = mixture_weights({"sw": 10, "ha": 30, "en": 40, "zh": 20})
  r = dict(zip(w, replay_weights(list(w), list(w.values()), ["en", "zh"], 0.1)))
  assert abs(r["en"] + r["zh"] - 0.1) < 1e-12 and abs(sum(r.values()) - 1) < 1e-12
  assert abs(r["en"] / r["zh"] - 2.0) < 1e-12 and abs(r["ha"] / r["sw"] - 3.0) < 1e-12
  with pytest.raises(ValueError, match="replay share"):
    replay_weights(list(w), list(w.values()), ["en", "zh", "sw", "ha"], 0.1)


def test_language_specific_official_starts_with_the_dense_ffn_as_shared_expert():
  run = method_runs.get("language_specific_official")
  dense = method_runs.dense_params()["segments"][0]["blocks"]["ffn"]
  ffn = run.initial["segments"][0]["blocks"]["ffn"]  # every layer is MoE
  for name in ("gate_proj", "up_proj", "down_proj"):
    np.testing.assert_array_equal(ffn["shared_expert"][name]["kernel"], dense[name]["kernel"])
  assert run.config.moe.language_routing == "specific" and run.config.moe.top_k == 1
  # The shared expert and its gate train.
  final = run.final["segments"][0]["blocks"]["ffn"]
  assert not np.array_equal(final["shared_expert_gate"]["kernel"], ffn["shared_expert_gate"]["kernel"])
