"""The routing analysis names experts as the run's method defines them: Apollo-MoE by family or
language, MoE-LPR's expert 0 (the original FFN) with its share and probability per layer for
original and new languages, MoE-CT's appended blocks, and plain "expert i" otherwise."""
import jax
import numpy as np
import pytest

import method_runs
from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax.evaluation import report, routing
from medmoe_jax.evaluation.lm import LanguageModel


@pytest.mark.parametrize("name, expected", [("post_moe", "assigned"), ("hybrid_k12", "assigned"),
                                            ("language_specific", "assigned"),
                                            ("moe_lpr_stage1", "lpr"), ("moe_lpr_stage2", "lpr"),
                                            ("moe_ct", "moe_ct")])
def test_scheme_of_each_method_config(name, expected):
  assert routing.scheme(cfg_lib.resolve(load_config(name))) == expected


def test_counts_keep_router_probabilities():
  counts = routing.RoutingCounts(["en", "sw"], [-1, -1], num_layers=1, num_experts=3)
  idx = np.asarray([[[[0], [1], [2]]]])                    # [M=1, B=1, S=3, k=1]
  probs = np.asarray([[[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]])
  counts.add(idx, np.asarray([[0, 0, 1]]), np.ones((1, 3), bool), probs)
  r = counts.result([0], ["a", "b", "c"])
  np.testing.assert_allclose(r["languages"]["en"]["probs"], [[0.4, 0.5, 0.1]])
  np.testing.assert_allclose(r["languages"]["sw"]["probs"], [[0.3, 0.3, 0.4]])
  assert r["languages"]["en"]["own_share"] is None and r["average"]["own_share"] is None
  s = routing.lpr_summary(r, ["en"])
  assert s["original"] == {"languages": ["en"], "expert0_share": [0.5], "expert0_prob": [0.4]}
  assert s["new"] == {"languages": ["sw"], "expert0_share": [0.0], "expert0_prob": [0.3]}


def test_moe_lpr_stage2_report_names_expert_0_not_families(tmp_path):
  c = method_runs.tiny("moe_lpr_stage2")
  spec = cfg_lib.model_spec(c)
  params = method_runs.random_params(spec, seed=3)
  lm = LanguageModel.from_params(cfg_lib.resolve(c, num_devices=jax.device_count()), params,
                                 mesh=None, batch_size=4)
  original = list(c.languages.original)
  texts = {"en": "The patient has a fever and a cough.", "zh": "病人发烧咳嗽。",
           "es": "El paciente tiene fiebre.", "sw": "Mgonjwa ana homa na kikohozi.",
           "ha": "Mara lafiya yana da zazzabi.", "mg": "Manana tazo ny marary."}
  source = [{"text": t, "lang": l} for l, t in texts.items() for _ in range(2)]
  _, result, _ = routing.analyze(lm, source, list(texts), seq_len=32)
  assert result["scheme"] == "lpr"
  assert result["experts"] == ["expert 0 (original FFN)", "expert 1 (new)", "expert 2 (new)",
                               "expert 3 (new)"]
  assert all(v["own_expert"] == -1 and v["own_expert_name"] is None
             for v in result["languages"].values())
  lpr = result["lpr"]
  assert lpr["original"]["languages"] == original and set(lpr["new"]["languages"]) == {"sw", "ha", "mg"}
  assert len(lpr["original"]["expert0_prob"]) == len(result["layers"]) == c.model.num_layers
  for v in result["languages"].values():
    np.testing.assert_allclose(np.sum(v["probs"], axis=-1), 1.0, rtol=1e-4)
  en = np.asarray(result["languages"]["en"]["fractions"])[:, 0]
  want = np.mean([np.asarray(result["languages"][l]["fractions"])[:, 0] for l in original], 0)
  np.testing.assert_allclose(lpr["original"]["expert0_share"], np.round(want, 5))
  assert en.shape == (c.model.num_layers,)
  figs = routing.figures(result, str(tmp_path / "fig"))
  assert "own_share" not in figs and "average" in figs
  results = {"checkpoint": {"workdir": "w", "name": "moe_lpr_stage2"}, "eval_config": {},
             "evaluations": [{"step": 3, "routing": result, "figures": {}}]}
  text = report.render(results, str(tmp_path))
  assert "expert-0 share L0" in text and "expert-0 prob L1" in text
  routing_part = text.split("## Routing")[1]
  assert "Sino-Tibetan" not in text and "own expert" not in routing_part
  assert "expert 0 (original FFN)" in routing_part
