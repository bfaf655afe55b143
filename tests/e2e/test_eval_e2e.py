"""End to end: evaluate checkpoints the test trains (following the run, with a baseline), and
the routing analysis of a hard-routing model."""
import json
import math
import os

import jax
import numpy as np
import pytest
from conftest import load_config
from medmoe_jax import sharding
from medmoe_jax.eval import Evaluator
from medmoe_jax.evaluation import perplexity
from medmoe_jax.evaluation import routing as routing_lib
from medmoe_jax.evaluation.lm import LanguageModel

# Three major and two minor languages (sw, he have MCQ items), chosen so that the prompts and
# requests fall into few padded shapes: few programs compile.
LANGS = ["zh", "ja", "ko", "sw", "he"]


def _one_device(c):
  return sharding.make_mesh(c, jax.devices()[:1])


@pytest.fixture(scope="module")
def trained(post_moe_run):
  """A run with checkpoints at steps 15 and 30: the one test_train.py reads (trained once)."""
  return post_moe_run[0]


def test_eval_follows_a_run_and_writes_results_report_figures(trained):
  run, out = trained / "run", trained / "eval"
  c = load_config("eval")
  c.checkpoint = str(run)
  c.follow, c.follow_poll_seconds = True, 0.1
  c.baseline_checkpoint = str(run / "checkpoints" / "15")
  c.languages = ",".join(LANGS)
  c.batch_size = 4
  c.progress = False
  c.mcq.update(dict(max_per_source=2, max_new_tokens=4))
  c.perplexity.update(dict(max_batches=1, data_dir=str(trained / "data")))
  Evaluator(c, str(out), mesh=_one_device(c)).run()

  res = json.load(open(out / "results.json"))
  assert [e["step"] for e in res["evaluations"]] == [15, 30]
  assert res["baseline"]["step"] == 15 and res["seed"] == 0
  assert res["run_config"]["train"]["steps"] == 30 and res["eval_config"]["mcq"]["shots"] == 3
  # Each mode's accuracy from the predictions it wrote: (file, correctness key, prediction key).
  files = {"generative": ("mcq_generative.jsonl", "correct", "pred"),
           "loglikelihood": ("mcq_loglikelihood.jsonl", "correct", "pred"),
           "loglikelihood_norm": ("mcq_loglikelihood.jsonl", "correct_norm", "pred_norm")}
  for e in res["evaluations"]:
    m = e["mcq"]
    assert set(m) == {"generative", "loglikelihood", "loglikelihood_norm"}
    for name, mode in m.items():
      assert set(mode["per_language"]) == set(LANGS)
      assert mode["major_languages"] == 3 and mode["minor_languages"] == 2
      assert mode["items"] == 2 * len(LANGS)
      file, key, pred = files[name]
      with open(out / "predictions" / f"step_{e['step']}" / file) as f:
        recs = [json.loads(line) for line in f]
      for lang, v in mode["per_language"].items():
        mine = [r for r in recs if r["lang"] == lang and not r.get("skipped")]
        assert all(r[key] == (r[pred] == r["gold"]) for r in mine)
        assert v["n"] == len(mine) > 0
        assert v["acc_weighted"] == pytest.approx(sum(bool(r[key]) for r in mine) / len(mine))
      assert mode["major_average"] == pytest.approx(
          np.mean([v["acc"] for v in mode["per_language"].values() if v["class"] == "major"]))
    assert set(e["perplexity"]) == set(LANGS)
    assert all(1.0 < v["ppl"] < 4096 * 4 and v["tokens"] > 0 for v in e["perplexity"].values())
    rt = e["routing"]
    assert rt["layers"] == [2, 3] and len(rt["experts"]) == 7 and set(rt["languages"]) == set(LANGS)
    for v in rt["languages"].values():
      np.testing.assert_allclose(np.sum(v["fractions"], axis=1), 1.0, atol=1e-4)
      assert v["own_share"] == [row[v["own_expert"]] for row in v["fractions"]]
    assert e["dropped_fraction"] == 0.0

  # Forgetting: step 15 against itself changes nothing; step 30 against it, what it says.
  same, later = (e["forgetting"] for e in res["evaluations"])
  assert same["same_tokenizer"] and same["original_languages"] == sorted(load_config("post_moe").languages.use)
  assert all(abs(v["relative"]) < 1e-5 for v in same["perplexity"].values())
  assert all(v["delta"] == 0 for rows in same["accuracy"].values() for v in rows.values())
  base, last = res["baseline"], res["evaluations"][1]
  for lang, v in later["perplexity"].items():
    assert (v["baseline"], v["model"]) == (base["perplexity"][lang]["ppl"], last["perplexity"][lang]["ppl"])
    assert v["relative"] == pytest.approx(v["model"] / v["baseline"] - 1)
  assert later["summary"]["original"]["mean_ppl_relative_change"] == pytest.approx(
      np.mean([v["relative"] for v in later["perplexity"].values()]))
  assert later["summary"]["original"]["mean_ppl_relative_change"] != 0
  assert later["summary"]["new"]["languages"] == 0

  report = open(out / "report.md").read()
  for heading in ("# Evaluation: post_moe at step 30", "## Medical multiple choice",
                  "## Held-out perplexity", "## Routing", "## Forgetting", "## History"):
    assert heading in report
  links = [l.split("](", 1)[1].rstrip(")") for l in report.splitlines() if l.startswith("![")]
  assert len(links) >= 7 and all(os.path.isfile(out / l) for l in links)
  figures = set(os.listdir(out / "figures"))
  assert {"mcq_accuracy.png", "perplexity.png", "routing_average.png", "routing_own_share.png",
          "routing_languages.png", "forgetting.png", "history.png"} <= figures
  assert {f"routing_{l}.png" for l in LANGS} <= figures
  preds = [json.loads(l) for l in open(out / "predictions" / "step_30" / "mcq_generative.jsonl")]
  assert len(preds) == 2 * len(LANGS) and all(p["shots"] == 1 for p in preds)


def test_hard_routing_model_routes_every_token_to_its_own_expert(trained):
  # The trained model, served with hard language routing (an inference override).
  lm = LanguageModel.load(str(trained / "run"), overrides={"moe.language_routing": "hard"},
                          mesh=_one_device(load_config("post_moe")), batch_size=4)
  assert lm.spec.moe.language_routing == "hard" and lm.step == 30
  source = perplexity.heldout_source(lm.run.data, str(trained / "data"))
  # One language of each of the 7 families.
  langs = perplexity.heldout_languages(source, ["zh", "ja", "th", "mg", "en", "ar", "sw"])
  assert len(langs) == 7
  ppl, result, _ = routing_lib.analyze(lm, source, langs, seq_len=64, max_batches=1)
  assert set(result["languages"]) == set(langs) and len(result["experts"]) == 7
  assert sorted(v["own_expert"] for v in result["languages"].values()) == list(range(7))
  for lang, v in result["languages"].items():
    assert v["own_share"] == [1.0, 1.0] and v["own_hit_rate"] == [1.0, 1.0]
    assert all(row[v["own_expert"]] == 1.0 for row in v["fractions"])
  assert result["average"]["own_share"] == [1.0, 1.0]
  assert all(math.isfinite(v["ppl"]) for v in ppl.values())


def test_eval_follow_skips_a_damaged_step_and_leaves_it_in_place(trained, tmp_path, capfd):
  # Evaluation beside a training run reads, never renames: a damaged step is named and skipped.
  import shutil
  run = tmp_path / "run"
  shutil.copytree(trained / "run", run)
  with open(run / "checkpoints" / "30" / "state" / "_METADATA", "r+b") as f:
    f.seek(10)
    f.write(b"#")  # one changed byte
  c = load_config("eval")
  c.checkpoint = str(run)
  c.tasks = "perplexity"
  c.follow, c.follow_poll_seconds = True, 0.1
  c.languages = "zh,sw"
  c.progress = False
  c.perplexity.update(dict(max_batches=1, data_dir=str(trained / "data")))
  capfd.readouterr()
  res = Evaluator(c, str(tmp_path / "eval"), mesh=_one_device(c)).run()
  assert [e["step"] for e in res["evaluations"]] == [15]
  out, err = capfd.readouterr()
  assert (f"follow: step 30 skipped: checkpoint step 30 in {run / 'checkpoints'} is damaged: "
          f"{run / 'checkpoints' / '30' / 'state' / '_METADATA'} has changed contents") in err
  assert "follow: the run's final step 30 is damaged (skipped); done" in out
  assert sorted(os.listdir(run / "checkpoints")) == ["15", "30"]
