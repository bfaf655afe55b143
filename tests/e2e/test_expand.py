"""The expansion experiment end to end in --quick mode: every file, table row, figure and key the
report promises is there, and the claims' verdicts follow from the numbers. Not its conclusions:
a 10-step budget on a 32-wide model shows nothing about the methods."""
import copy
import json
import math
import os
import re

import pytest

from medmoe_jax.experiments import expand, expand_report

METHODS = ("dense_ct", "post_moe", "moe_lpr", "moe_ct")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("expand") / "out"
  expand.main(["--workdir", str(out), "--quick", "--no_progress", "--corpus", "sample"])
  return out


def test_quick_run_writes_report_results_and_figures(quick):
  res = json.load(open(quick / "results.json"))
  for key in ("format", "date", "settings", "seeds", "machine", "languages", "heldout", "budget",
              "base", "table", "methods", "claims", "wall_time", "figures"):
    assert key in res, key
  assert res["settings"]["quick"] and res["seeds"]["seeds"] == [0] and set(res["per_seed"]) == {"0"}
  assert res["machine"]["cores"] >= 1 and res["machine"]["jax"]
  assert res["languages"]["original"] == ["en", "zh", "es"] and res["languages"]["new"] == ["sw", "ha", "mg"]

  # The table: one row per method (and MoE-LPR's stage-1 model), finite numbers, the same budget.
  rows = {r["method"]: r for r in res["table"]}
  assert set(METHODS) <= set(rows) and "moe_lpr_stage1" in rows
  for r in rows.values():
    for k in ("original_ppl", "original_change", "new_ppl", "new_gain", "tokens_trained"):
      assert r[k] is not None and math.isfinite(r[k]), (r["method"], k)
      assert r[k + "_sd"] is None  # one seed: no spread
  budget = res["budget"]
  # MoE-LPR: stage 1 is the budget; stage 2 (the review) runs until expert 0 converges or the cap.
  split = budget["moe_lpr_split"]
  assert split["stage1_steps"] == budget["steps"]
  seed0 = res["per_seed"]["0"]
  train = seed0["methods"]["moe_lpr"]["training"]
  review = seed0["methods"]["moe_lpr"]["review"]
  assert [train[r]["steps"] for r in ("moe_lpr_stage1", "moe_lpr_stage2")] == [
      split["stage1_steps"], split["stage2_steps"][0]] == [budget["steps"], review["steps"]]
  assert review["steps"] == split["stage2_cap"] or review["converged"]
  for m in ("dense_ct", "post_moe", "moe_ct"):
    assert seed0["methods"][m]["training"][m]["steps"] == budget["steps"]

  # Each number is the eval job's: group perplexity from the per-language NLLs, change vs base.
  base = seed0["base"]
  for m in METHODS:
    meth = seed0["methods"][m]
    assert res["methods"][m]["original_change"] == meth["original_change"]  # the mean of one
    per_lang = [meth["perplexity"][l] for l in res["languages"]["original"]]
    o = math.exp(sum(p["nll"] * p["tokens"] for p in per_lang) / sum(p["tokens"] for p in per_lang))
    assert meth["original_ppl"] == pytest.approx(o)
    assert meth["original_change"] == pytest.approx(o / base["original_ppl"] - 1)
    assert meth["new_gain"] == pytest.approx(1 - meth["new_ppl"] / base["new_ppl"])
    assert set(meth["forgetting"]["perplexity"]) == set(res["heldout"]["tokens"])

  # Routing for the MoE models only; Post-MoE's own-family share per MoE layer.
  assert res["methods"]["dense_ct"]["routing"] is None
  pm = res["methods"]["post_moe"]["routing"]
  assert pm["layers"] == [1, 2] and len(pm["experts"]) == 7
  assert set(pm["own_share"]) == {"sw", "ha", "mg"} and len(pm["own_share_mean"]) == 2
  assert len(res["methods"]["moe_lpr"]["routing"]["expert0_share"]["original"]) == 3  # all layers

  # Claims: eight, each verdict what its numbers say.
  claims = {c["id"]: c for c in res["claims"]}
  assert len(claims) == 8 and all(c["status"] in ("PASS", "FAIL") for c in claims.values())
  assert all(c["per_seed"] == {"0": c["status"]} for c in claims.values())
  verdict = {
      "full_ct_forgets": rows["dense_ct"]["original_change"] > 0.02,
      "moe_lpr_gains_more": rows["moe_lpr"]["new_gain"] > rows["dense_ct"]["new_gain"],
      "lpr_stage2_converges": review["converged"],
      "moe_lpr_keeps_original": rows["moe_lpr"]["original_change"] <= 0.02,
      "moe_ct_keeps_original": rows["moe_ct"]["original_change"] <= 0.02,
      "full_ct_forgets_more": rows["dense_ct"]["original_change"] > max(
          rows["moe_lpr"]["original_change"], rows["moe_ct"]["original_change"]),
      "every_method_gains": all(rows[m]["new_gain"] > 0 for m in METHODS),
      "own_share_rises": pm["own_share_mean"][-1] > pm["own_share_mean"][0]}
  for cid, ok in verdict.items():
    assert claims[cid]["status"] == ("PASS" if ok else "FAIL"), cid

  # Wall time: every run's training and evaluation, and the total.
  phases = res["wall_time"]["phases"]
  for name, _, _ in expand.RUNS:
    assert any(p.startswith(f"seed 0: train {name} ") for p in phases)
    assert f"seed 0: eval {name}" in phases
  assert res["wall_time"]["total"] >= sum(phases.values()) - 1e-6

  # report.md: the sections, a table row per method with finite numbers, figures that exist.
  report = open(quick / "report.md").read()
  for heading in ("## Result", "## The papers' claims, checked", "## Per language", "## Routing",
                  "## Setup", "## Wall time"):
    assert heading in report
  table = report.split("## Result")[1].split("\n\n")[1].splitlines()
  for m in (*METHODS, "moe_lpr_stage1"):
    line = next(l for l in table if l.startswith(f"| {expand_report.LABELS[m]} |"))
    cells = [c.strip() for c in line.strip("|").split("|")][1:]
    assert len(cells) == 6 and all(math.isfinite(float(c.rstrip("%"))) for c in cells), line
  assert len(re.findall(r"^\d\. \*\*(PASS|FAIL)\*\*", report, re.M)) == 8
  links = re.findall(r"\]\(([^)]+\.png)\)", report)
  assert "figures/tradeoff.png" in links and "seed0/eval/post_moe/figures/routing_own_share.png" in links
  images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
  assert images == ["figures/tradeoff.png", "figures/post_moe_own_share.png", "figures/moe_lpr_routing.png"]
  assert {"figures/moe_lpr_routing.png", "figures/post_moe_own_share.png"} <= set(links)
  # The scatter's points: retention (base ppl / model ppl) and gain of the one seed.
  for m in METHODS:
    p = res["tradeoff_points"][m]
    assert p["retention"] == pytest.approx(1 / (1 + rows[m]["original_change"]))
    assert p["gain"] == pytest.approx(rows[m]["new_gain"]) and p["gain_sd"] is None
  # CPU time: per phase and in all.
  assert set(res["wall_time"]["phases_cpu"]) == set(phases)
  assert 0 < res["wall_time"]["cpu_total"] and "CPU time" in report
  assert all(os.path.isfile(quick / l) for l in links)


def test_seeds_aggregate_to_mean_spread_and_per_seed_verdicts(quick):
  """Two seeds from the quick run's one: the second forgets 10 points more with every method and
  gains 10 points more; means, sample sd and each seed's own verdicts follow."""
  res = json.load(open(quick / "results.json"))
  s0 = res["per_seed"]["0"]
  s1 = copy.deepcopy(s0)
  for row in s1["table"]:
    for target in (row, s1["methods"][row["method"]]):
      target["original_change"] += 0.1
      target["new_gain"] += 0.1
  s1["claims"] = expand_report.claims(s1)
  s = expand.Settings.make(quick=True, seeds=(0, 1), corpus="sample")
  agg = expand_report.build(s, {0: s0, 1: s1}, {}, res["languages"]["family"])
  for row, r0 in zip(agg["table"], s0["table"]):
    assert row["original_change"] == pytest.approx(r0["original_change"] + 0.05)
    assert row["original_change_sd"] == pytest.approx(0.1 / math.sqrt(2))
    assert row["new_ppl_sd"] == pytest.approx(0.0) and row["new_ppl"] == pytest.approx(r0["new_ppl"])
  for c in agg["claims"]:
    own = {k: next(x["status"] for x in sr["claims"] if x["id"] == c["id"]) for k, sr in (("0", s0), ("1", s1))}
    assert c["per_seed"] == own and c["held_in_seeds"] == sum(v == "PASS" for v in own.values())
  assert agg["claims"][0]["status"] == ("PASS" if s0["table"][2]["original_change"] + 0.05 <= 0.02 else "FAIL")
  report = expand_report.render(dict(agg, wall_time={"phases": {}, "total": 1.0}))
  assert "Mean ± standard deviation over the 2 seeds." in report and "Per seed: " in report


def test_rerun_with_other_settings_is_refused(quick):
  with pytest.raises(SystemExit, match=r"other settings \(seeds\)"):
    expand.main(["--workdir", str(quick), "--quick", "--seed", "3", "--no_progress",
                 "--corpus", "sample"])


def test_languages_are_checked_before_any_compute(tmp_path):
  with pytest.raises(SystemExit, match=r"--new: 'fr' is Indo-European, a family the original"):
    expand.main(["--workdir", str(tmp_path), "--quick", "--new", "sw,fr", "--corpus", "sample"])
  with pytest.raises(SystemExit, match=r"--original: 'xx' is not in the embedded sample"):
    expand.main(["--workdir", str(tmp_path), "--quick", "--original", "en,xx", "--corpus", "sample"])
  assert not os.listdir(tmp_path)


def test_group_perplexity_weights_every_token_once():
  ppl = {"a": {"nll": 1.0, "tokens": 30}, "b": {"nll": 3.0, "tokens": 10}, "c": {"nll": 9.0, "tokens": 0}}
  assert expand_report.group_ppl(ppl, ["a", "b", "c", "zz"]) == pytest.approx(math.exp(1.5))
  assert expand_report.group_ppl(ppl, ["c"]) is None


def test_report_rerenders_from_results_json(quick, tmp_path):
  """`python -m medmoe_jax.experiments.expand_report OUT`: the same report, claims and figures
  from results.json alone; a changed number changes the verdict."""
  import shutil
  shutil.copy(quick / "results.json", tmp_path / "results.json")
  res = expand_report.rerender(str(tmp_path))
  assert (tmp_path / "report.md").read_text() == (quick / "report.md").read_text()
  assert res["claims"] == json.load(open(quick / "results.json"))["claims"]
  assert {"tradeoff.png", "moe_lpr_routing.png"} <= set(os.listdir(tmp_path / "figures"))
  res["per_seed"]["0"]["methods"]["moe_lpr"]["new_gain"] = res["methods"]["moe_lpr"]["new_gain"] = 9.0
  json.dump(res, open(tmp_path / "results.json", "w"))
  again = {c["id"]: c for c in expand_report.rerender(str(tmp_path))["claims"]}
  assert again["moe_lpr_gains_more"]["status"] == "PASS" and again["moe_lpr_gains_more"]["per_seed"] == {"0": "PASS"}


def test_publish_copies_the_shown_images_beside_the_page(quick, tmp_path):
  md = tmp_path / "docs" / "expand_report.md"
  copied = expand_report.publish(str(quick), str(md), "made by the test")
  page = md.read_text()
  assert page.startswith("<!-- made by the test -->")
  shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
  assert shown == ["expand_report/tradeoff.png", "expand_report/post_moe_own_share.png",
                   "expand_report/moe_lpr_routing.png"]
  assert sorted(copied) == sorted(str(md.parent / s) for s in shown)
  for s in shown:  # the very files the run drew
    name = os.path.basename(s)
    assert (md.parent / s).read_bytes() == (quick / "figures" / name).read_bytes()
  assert "`OUT/seed0/eval/post_moe/figures/routing_own_share.png`" in page
  assert not re.search(r"(?<!!)\[[^\]]*\]\(", page)  # no link into OUT is left dangling
