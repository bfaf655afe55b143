"""The lm-evaluation-harness adapter (lm_eval is in the test extra: this runs in CI)."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

import lm_eval  # noqa: F401  (the test extra installs it; a missing one fails, not skips)

from conftest import load_config  # noqa: E402
from medmoe_jax import config as cfg_lib  # noqa: E402
from medmoe_jax import sharding  # noqa: E402
from medmoe_jax.evaluation.lm import LanguageModel  # noqa: E402
from medmoe_jax.evaluation.lm_eval_adapter import MedMoELM  # noqa: E402
from medmoe_jax.model import Transformer  # noqa: E402


@pytest.fixture(scope="module")
def adapter():
  c = load_config("post_moe")
  c.model.update(dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64, init_std=0.3))
  c.moe.layers = "last:1"
  spec = cfg_lib.model_spec(c)
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(spec, rngs=nnx.Rngs(0)),
                                                       nnx.Param)))()
  lm = LanguageModel.from_params(cfg_lib.resolve(c), params,
                                 mesh=sharding.make_mesh(c, jax.devices()[:1]), batch_size=4)
  return MedMoELM(lm=lm, max_length=64, max_gen_toks=5)


def _instances(kind, args):
  from lm_eval.api.instance import Instance
  return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_adapter_answers_the_three_request_types(adapter):
  from lm_eval.api.registry import get_model
  assert get_model("medmoe_jax") is MedMoELM
  lm = adapter.lm
  pairs = [("Question: which organ pumps blood?\nAnswer:", " heart"),
           ("Question: which organ pumps blood?\nAnswer:", " liver"), ("", "Fever and cough.")]
  got = adapter.loglikelihood(_instances("loglikelihood", pairs))
  assert got == lm.loglikelihood(pairs, max_len=64)
  assert all(isinstance(lp, float) and lp < 0 and isinstance(g, bool) for lp, g in got)
  text = "Malaria is transmitted by mosquitoes. " * 6  # longer than one 64-token window
  (rolling,) = adapter.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]))
  assert len(lm.tokenizer.encode(text)) > 64
  assert rolling == pytest.approx(lm.loglikelihood_rolling([text], max_len=64)[0])
  outs = adapter.generate_until(_instances("generate_until", [
      ("Question: fever?\nAnswer:", {"until": ["\n\n"], "max_gen_toks": 4}),
      ("Q:", {"until": "zzzz", "do_sample": False})]))
  # The harness's causal-LM prompts have no BOS (lm-eval 0.4.1, MoE-LPR's version).
  plain = lm.generate([(lm.tokenizer.encode("Q:"), None)], max_new_tokens=5)
  assert isinstance(outs[0], str) and outs[1] == plain[0].split("zzzz")[0]
  with pytest.raises(ValueError, match="greedily only"):
    adapter.generate_until(_instances("generate_until", [("Q:", {"do_sample": True, "temperature": 0.7})]))


def test_simple_evaluate_runs_a_multiple_choice_task(adapter, tmp_path):
  """The harness end to end on a local two-question task."""
  data = tmp_path / "mcq.jsonl"
  data.write_text("\n".join(json.dumps(d) for d in [
      {"q": "Which organ pumps blood?", "choices": ["heart", "liver"], "label": 0},
      {"q": "Which organ filters blood?", "choices": ["lung", "kidney"], "label": 1}]))
  task = {"task": "medmoe_local_mcq", "dataset_path": "json",
          "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
          "output_type": "multiple_choice", "doc_to_text": "Question: {{q}}\nAnswer:",
          "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
          "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
  out = lm_eval.simple_evaluate(model=adapter, tasks=[task], limit=2)
  res = out["results"]["medmoe_local_mcq"]
  assert 0.0 <= res["acc,none"] <= 1.0 and 0.0 <= res["acc_norm,none"] <= 1.0
  # The harness's accuracy is ours: recompute it from the adapter's log-likelihoods.
  docs = [("Which organ pumps blood?", ["heart", "liver"], 0), ("Which organ filters blood?", ["lung", "kidney"], 1)]
  acc = np.mean([np.argmax([adapter.lm.loglikelihood([(f"Question: {q}\nAnswer:", " " + ch)])[0][0]
                            for ch in chs]) == y for q, chs, y in docs])
  assert res["acc,none"] == pytest.approx(acc)
