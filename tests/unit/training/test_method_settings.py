"""Method settings as the official scripts set them: MoE-LPR's load-balancing weight in Hugging
Face's units, xavier-normal routers, no weight decay or warm-up, stage-2 documents drawn as
LLaMA-Factory's max_samples draws them."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax.data import pipeline
from medmoe_jax.model import routing
from medmoe_jax.training import step as step_lib


def _hf_load_balancing_loss(gate_logits, num_experts, top_k):
  """MoE-LPR's transformers fork, load_balancing_loss_func (no attention mask), in numpy."""
  z = gate_logits - gate_logits.max(-1, keepdims=True)
  routing_weights = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  selected = np.argsort(-routing_weights, axis=-1)[:, :top_k]
  expert_mask = np.eye(num_experts)[selected]                # [T, k, E]
  tokens_per_expert = expert_mask.mean(0)                     # [k, E]
  router_prob_per_expert = routing_weights.mean(0)            # [E]
  return float(np.sum(tokens_per_expert * router_prob_per_expert[None]) * num_experts)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_lb_weight_is_in_hf_units(k):
  logits = np.random.RandomState(k).randn(64, 4).astype(np.float32) * 2
  probs = jax.nn.softmax(jnp.asarray(logits), -1)
  _, idx = jax.lax.top_k(probs, k)
  ours = float(routing.load_balance_loss(probs, idx, jnp.ones(64)))
  hf = _hf_load_balancing_loss(logits, 4, k)
  assert hf == pytest.approx(k * ours, rel=1e-5)
  c = load_config("moe_lpr_stage1")
  c.moe.top_k = k
  assert c.moe.lb_loss_units == "hf"
  w = step_lib.loss_weights(cfg_lib.train_spec(c))
  # The weight the trainer puts on our lb_loss: the config's (HF) weight times the HF loss.
  assert w.lb * ours == pytest.approx(c.moe.lb_loss_weight * hf, rel=1e-5)
  assert cfg_lib.lb_weight_hf_units(c) == c.moe.lb_loss_weight  # what an HF export writes
  c.moe.lb_loss_units = "choice"  # the default: the weight is on our per-choice loss
  assert step_lib.loss_weights(cfg_lib.train_spec(c)).lb == c.moe.lb_loss_weight
  assert cfg_lib.lb_weight_hf_units(c) == pytest.approx(c.moe.lb_loss_weight / k)


def test_moe_lpr_optimizer_and_router_settings():
  for name in ("moe_lpr_stage1", "moe_lpr_stage2"):
    for size in ("tiny", "0.5b"):
      c = load_config(name, size)
      assert (c.train.weight_decay, c.train.warmup_frac, c.train.min_lr_ratio) == (0.0, 0.0, 0.0)
      # HF TrainingArguments' AdamW defaults (the official DeepSpeed config names no optimizer).
      assert (c.train.b1, c.train.b2, c.train.eps) == (0.9, 0.999, 1e-8)
      assert cfg_lib.train_spec(c).b2 == 0.999
      assert c.moe.router_init == "xavier_normal"
  c = load_config("moe_lpr_stage1")
  assert c.moe.lb_loss_weight == 0.01
  assert step_lib.loss_weights(cfg_lib.train_spec(c)).lb == pytest.approx(0.02)
  spec = cfg_lib.model_spec(c)
  expected = math.sqrt(2.0 / (c.model.d_model + c.moe.num_experts))
  assert spec.moe.router_init_std == pytest.approx(expected)
  c.moe.router_init = "uniform"
  with pytest.raises(cfg_lib.ConfigError, match="config.moe.router_init"):
    cfg_lib.validate(c)


def test_xavier_router_is_what_the_model_initialises():
  from flax import nnx
  from medmoe_jax.model import Transformer
  c = load_config("moe_lpr_stage1")
  c.model.update(dict(vocab_size=256, d_model=256, num_layers=1, num_heads=4, num_kv_heads=2, d_ff=64))
  spec = cfg_lib.model_spec(c)
  model = Transformer(spec, rngs=nnx.Rngs(0))
  routers = [np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
             if "router" in "/".join(map(str, path))]
  assert routers
  w = np.concatenate([r.reshape(-1) for r in routers])
  assert np.std(w) == pytest.approx(math.sqrt(2.0 / (256 + 4)), rel=0.1)


def test_stage2_draws_the_first_n_documents_of_every_language():
  groups = [("en", "a", 1.0, np.array([5, 1, 3])), ("en", "b", 1.0, np.array([10, 11])),
            ("sw", "a", 1.0, np.array([7, 8]))]
  got = pipeline.cap_documents(groups, 4)
  assert [(l, p, i.tolist()) for l, p, _, i in got] == [("en", "a", [1, 3, 5]), ("en", "b", [10]),
                                                         ("sw", "a", [7, 8])]
  c = load_config("moe_lpr_stage2")
  assert c.data.max_docs_per_language == 50000 and c.data.replay_share == 0.0
  assert c.data.temperature == 1.0
  cfg_lib.validate(c)
  c.data.max_docs_per_language = -1
  with pytest.raises(cfg_lib.ConfigError, match="config.data.max_docs_per_language"):
    cfg_lib.validate(c)


def test_max_docs_per_language_limits_the_training_stream():
  from medmoe_jax.data.tokenizer import load_tokenizer
  tok = load_tokenizer("sample")
  recs = [{"text": f"document {i} of {lang}", "lang": lang} for lang in ("en", "sw") for i in range(6)]
  ds = pipeline.make_lm_dataset(recs, languages=["en", "sw"], tokenizer=tok, seq_len=16,
                                batch_size=4, seed=0, max_docs_per_language=2, num_threads=0,
                                prefetch=0)
  seen = set()
  for _, b in zip(range(10), ds):
    for row, seg in zip(b["tokens"], b["segment_ids"]):
      for s in set(seg.tolist()) - {0}:
        seen.add(tok.decode(row[seg == s]))
  assert seen == {"document 0 of en", "document 1 of en", "document 0 of sw", "document 1 of sw"}


def test_ne_from_the_official_data_loads_with_a_warning(caplog, tmp_path):
  import json
  import logging
  from medmoe_jax.data import corpus
  c = load_config("post_moe")
  c.languages.use = ("en", "zh", "ne")
  cfg_lib._NE_WARNED.clear()  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    cfg_lib.validate(c)
  assert any("'ne' is ISO 639-1 for Nepali" in r.getMessage() for r in caplog.records)
  a = cfg_lib.expert_assignment(c)
  altaic = a.expert_names.index("Altaic")
  assert a.lang_to_expert[2] == altaic  # the official code's family for `ne`
  # Records keyed `ne` (an official file named by its language) are read and kept.
  f = tmp_path / "medicalWiki_ne.json"
  f.write_text(json.dumps([{"text": "नेपाली पाठ"}], ensure_ascii=False), encoding="utf-8")
  c.data.sources = [{"paths": str(f), "lang": "from_path"}]
  c.data.data_dir = str(tmp_path / "data")
  built = corpus.build_sources(cfg_lib.data_spec(c, str(tmp_path)), log=None)
  assert built[0].stats["documents"]["validation"] == {"ne": 1}
  # Explicitly refused: the earlier error.
  c.languages.paper_ne_alias = False
  with pytest.raises(cfg_lib.ConfigError, match="paper_ne_alias"):
    cfg_lib.validate(c)


def test_hybrid_k_analysis_config_has_moe_in_every_layer():
  from medmoe_jax.model.spec import parse_moe_layers
  for size in ("tiny", "0.5b"):
    c = load_config("hybrid_k12_all", size)
    cfg_lib.validate(c)
    assert parse_moe_layers(c.moe.layers, c.model.num_layers) == tuple(range(c.model.num_layers))
    assert (c.moe.num_experts, c.moe.top_k, c.moe.language_routing) == (12, 2, "hybrid")
    assert sorted(cfg_lib.expert_assignment(c).expert_names) == sorted(c.languages.use)
