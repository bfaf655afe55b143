"""The expansion experiment on its default corpus, the synthetic medical languages, in --quick
mode: the corpus and its tokenizer are written; the base trains on the original languages plus
a small share of the new ones and its held-out curve is reported; MoE-LPR's stage 2 runs until
expert 0 has converged or its cap, with the per-layer probabilities logged; MoE-CT replays the
original languages; Post-MoE's experts are the corpus's families. Not the conclusions: a quick
run is too small to show them."""
import json
import math
import os

import pytest

from medmoe_jax.experiments import expand

ORIGINAL, NEW = ["qaa", "qab", "qba"], ["qca", "qcb", "qda"]
FAMILIES = {"qaa": "Synthetic A", "qab": "Synthetic A", "qba": "Synthetic B",
            "qca": "Synthetic C", "qcb": "Synthetic C", "qda": "Synthetic D"}


def test_synthetic_languages_are_checked_before_any_compute(tmp_path):
  with pytest.raises(SystemExit, match=r"--original: 'en' is not in the synthetic corpus"):
    expand.main(["--workdir", str(tmp_path), "--quick", "--original", "en"])
  with pytest.raises(SystemExit, match=r"--new: 'qab' is Synthetic A, a family the original "
                     r"languages cover \(the corpus's family table\)"):
    expand.main(["--workdir", str(tmp_path), "--quick", "--original", "qaa", "--new", "qab"])
  assert not os.listdir(tmp_path)


@pytest.mark.e2e
def test_quick_run_on_the_synthetic_corpus(tmp_path):
  out = tmp_path / "out"
  res = expand.main(["--workdir", str(out), "--quick", "--no_progress", "--spread_out"])
  s = res["settings"]
  assert s["corpus"] == "synthetic" and res["languages"]["original"] == ORIGINAL
  assert res["languages"]["new"] == NEW and res["languages"]["family"] == FAMILIES
  meta = json.load(open(out / "corpus" / "languages.json"))
  assert set(meta["docs"].values()) == {s["corpus_docs"]} and len(meta["docs"]) == 8
  assert os.path.isfile(out / "corpus" / "tokenizer.model")
  seed0 = res["per_seed"]["0"]

  # The base: the original languages, and the new ones at base_new_share of the documents.
  base = seed0["base"]
  assert base["training"]["languages"] == NEW + ORIGINAL
  assert base["training"]["replay_share"] == pytest.approx(1 - s["base_new_share"])
  seen = set()
  for line in open(out / "seed0" / "runs" / "base" / "metrics.jsonl"):
    seen |= set(json.loads(line)["lang_loss"])
  assert set(ORIGINAL) <= seen
  # Its held-out curve: one point per kept checkpoint, the last the base's own evaluation.
  curve = base["curve"]
  assert [c["step"] for c in curve] == [s["base_steps"] // 2, s["base_steps"]]
  assert all(math.isfinite(c["original_ppl"]) and math.isfinite(c["new_ppl"]) for c in curve)
  assert curve[-1]["original_ppl"] == pytest.approx(base["original_ppl"])
  st = base["settled"]
  assert st["last_change"] == pytest.approx(curve[1]["original_ppl"] / curve[0]["original_ppl"] - 1)
  assert st["settled"] == (abs(st["last_change"]) < 0.02)

  # MoE-LPR stage 2: checked every lpr_stage2_check steps, until converged or the cap.
  rv = seed0["methods"]["moe_lpr"]["review"]
  assert (rv["cap"], rv["check_every"], rv["target"]) == (6, 3, 0.95)
  hist = [json.loads(l) for l in open(out / "seed0" / "runs" / "moe_lpr_stage2" / "metrics.jsonl")]
  assert [c["step"] for c in rv["curve"]] == [r["step"] for r in hist] and hist[-1]["step"] == rv["steps"]
  assert all(r["step"] % 3 == 0 or r["step"] == 6 for r in hist)
  for c in rv["curve"]:
    assert len(c["expert0_prob"]) == s["num_layers"]  # MoE-LPR: every layer is an MoE layer
    assert all(x is None or 0 < x < 1 for x in c["expert0_prob"])
  last = rv["curve"][-1]["expert0_prob"]
  assert rv["converged"] == all(x is not None and x > 0.95 for x in last)
  assert rv["converged"] or rv["steps"] == rv["cap"]
  assert seed0["methods"]["moe_lpr"]["training"]["moe_lpr_stage2"]["replay_share"] == 0.5

  # MoE-CT replays the original languages; full CT and Post-MoE see only the new ones.
  ct = seed0["methods"]["moe_ct"]["training"]["moe_ct"]
  assert ct["languages"] == NEW + ORIGINAL and ct["replay_share"] == pytest.approx(0.2)
  assert seed0["methods"]["dense_ct"]["training"]["dense_ct"]["languages"] == NEW
  # Post-MoE: one expert per family of the corpus; own-family shares for the new languages.
  pm = res["methods"]["post_moe"]["routing"]
  assert pm["experts"] == ["Synthetic A", "Synthetic B", "Synthetic C", "Synthetic D"]
  assert set(pm["own_share"]) == set(NEW)

  # "Spread Out in the End": its own process, an all-layers hybrid-k model on its own corpus; the
  # quarter check follows its profile.
  so = res["spread_out"]
  assert so["settings"]["num_layers"] == 4 and so["layers"] == [0, 1, 2, 3]
  assert len(so["families"]) == 6 and len(so["own_share_mean"]) == 4
  first, last = so["own_share_mean"][0], so["own_share_mean"][-1]
  assert so["check"]["status"] == ("PASS" if last > first else "FAIL")
  assert so["check"]["first_quarter"] == pytest.approx(first)
  assert os.path.isfile(out / "spread_out" / "own_share.png") and so["cpu_time"] > 0
  assert any(p.startswith("spread-out: wait") for p in res["wall_time"]["phases"])

  report = open(out / "report.md").read()
  assert "## Spread Out in the End" in report and "](spread_out/own_share.png)" in report
  for text in ("## Base training", "## MoE-LPR stage 2", "- Corpus: synthetic medical languages",
               f"Seed 0: mean router probability of expert 0", "a BPE tokenizer trained on the corpus"):
    assert text in report, text
