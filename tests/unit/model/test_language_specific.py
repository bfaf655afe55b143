"""Apollo-MoE's language-specific variant as its code builds it: per-language experts + a shared
expert copied from the dense FFN behind a sigmoid gate, top-1, MoE in every layer; training: own
expert with weight 1; inference: the router's top-1 with its softmax weight, no language tag."""
import jax.numpy as jnp
import jax
import numpy as np
import pytest

from conftest import load_config
from method_runs import random_params
from medmoe_jax import config as cfg_lib
from medmoe_jax import hf, upcycle
from medmoe_jax.model import routing
from medmoe_jax.model.spec import parse_moe_layers

PROBS = np.asarray([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2]], np.float32)
LOGITS = jnp.log(jnp.asarray(PROBS))


def test_specific_routing_own_expert_in_training_router_top1_at_inference():
  forced = jnp.asarray([2, -1])
  tr = routing.route(LOGITS, top_k=1, norm_topk=False, mode="specific", forced=forced, train=True)
  np.testing.assert_array_equal(tr.indices, [[2], [1]])   # own expert; no language: argmax
  np.testing.assert_array_equal(tr.weights, [[1.0], [1.0]])
  ev = routing.route(LOGITS, top_k=1, norm_topk=False, mode="specific", forced=forced, train=False)
  np.testing.assert_array_equal(ev.indices, [[0], [1]])   # the router's choice, language ignored
  np.testing.assert_allclose(ev.weights, [[0.5], [0.7]], rtol=1e-6)  # its softmax weight
  # Inference needs no language tag at all.
  none = routing.route(LOGITS, top_k=1, norm_topk=False, mode="specific", train=False)
  np.testing.assert_array_equal(none.indices, ev.indices)
  with pytest.raises(ValueError, match="specific language routing needs"):
    routing.route(LOGITS, top_k=1, norm_topk=False, mode="specific", train=True)


def test_config_is_the_official_layout():
  for size in ("tiny", "0.5b"):
    c = load_config("language_specific_official", size)
    cfg_lib.validate(c)
    spec = cfg_lib.model_spec(c)
    assert parse_moe_layers(c.moe.layers, c.model.num_layers) == tuple(range(c.model.num_layers))
    m = spec.moe
    assert (m.num_experts, m.top_k, m.norm_topk, m.language_routing) == (12, 1, False, "specific")
    assert (m.shared_d_ff, m.shared_gate) == (c.model.d_ff, True)
    assert cfg_lib.expert_assignment(c).expert_names == tuple(sorted(c.languages.use))
    try:  # no language tag at inference: nothing about routing stops an export
      hf.check_exportable(spec)
    except hf.HFError as e:
      assert "language" not in str(e), e
  c = load_config("language_specific_official")
  c.model.d_ff = 48  # the shared expert follows the dense FFN's width
  assert cfg_lib.model_spec(c).moe.shared_d_ff == 48
  c.upcycle.shared_expert = "copy"
  with pytest.raises(cfg_lib.ConfigError, match="config.upcycle.shared_expert"):
    cfg_lib.validate(c)
  c = load_config("post_moe")
  c.upcycle.shared_expert = "dense"  # no shared expert of full width
  with pytest.raises(cfg_lib.ConfigError, match="shared_expert_d_ff"):
    cfg_lib.validate(c)


def test_upcycling_copies_the_dense_ffn_into_experts_and_shared_expert():
  c = load_config("language_specific_official")
  c.model.update(dict(vocab_size=256, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64))
  spec = cfg_lib.model_spec(c)
  dc = load_config("dense")
  dc.model.update(dict(vocab_size=256, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64))
  dense = random_params(cfg_lib.model_spec(dc), seed=1, std=0.3)
  fresh = random_params(spec, seed=2)
  params = upcycle.upcycle("apollo", dense, fresh, spec, shared_from_dense=True)
  ffn, dffn = params["segments"][0]["blocks"]["ffn"], dense["segments"][0]["blocks"]["ffn"]
  for name in ("gate_proj", "up_proj", "down_proj"):
    np.testing.assert_array_equal(ffn["shared_expert"][name]["kernel"], dffn[name]["kernel"])
  np.testing.assert_array_equal(ffn["wi_up"][:, 7], dffn["up_proj"]["kernel"])
  # The gate and the router are new, as in the official conversion.
  new = fresh["segments"][0]["blocks"]["ffn"]
  jax.tree.map(np.testing.assert_array_equal, ffn["shared_expert_gate"], new["shared_expert_gate"])
  np.testing.assert_array_equal(ffn["router"], new["router"])
  plain = upcycle.upcycle("apollo", dense, fresh, spec)  # default: the shared expert stays fresh
  np.testing.assert_array_equal(plain["segments"][0]["blocks"]["ffn"]["shared_expert"]["up_proj"]["kernel"],
                                new["shared_expert"]["up_proj"]["kernel"])
  with pytest.raises(ValueError, match="applies to method 'apollo'"):
    upcycle.upcycle("lpr", dense, fresh, spec, shared_from_dense=True)
