"""The expansion report's figures and checks from a small fixed results dict: the trade-off
scatter draws the seeds' means and spreads of retention and gain, the per-layer profiles are the
seeds' means, the "Spread Out in the End" quarter check fails on a decreasing profile, and the
new claims follow their numbers."""
import math
import os

import numpy as np
import pytest

from medmoe_jax.experiments import expand_figures as ef
from medmoe_jax.experiments import expand_report, spread_out

# Three seeds: base original-language ppl, and per method (original ppl, new-language gain).
BASE = [10.0, 12.0, 11.0]
METHODS = {"dense_ct": [(20.0, 0.60), (30.0, 0.70), (22.0, 0.65)],
           "post_moe": [(15.0, 0.62), (18.0, 0.66), (16.5, 0.61)],
           "moe_lpr": [(10.5, 0.40), (12.0, 0.45), (11.0, 0.50)],
           "moe_ct": [(10.0, 0.30), (12.6, 0.35), (11.55, 0.20)]}


def review(converged, last):
  return {"target": 0.95, "cap": 200, "check_every": 10, "steps": 40 if converged else 200,
          "converged": converged, "curve": [{"step": 10, "expert0_prob": [0.5] * len(last),
                                             "lpr_loss": 1.0},
                                            {"step": 20, "expert0_prob": last, "lpr_loss": 0.1}]}


def results():
  per_seed = {}
  for k, b in enumerate(BASE):
    methods = {m: {"original_ppl": v[k][0], "new_gain": v[k][1],
                   "original_change": v[k][0] / b - 1} for m, v in METHODS.items()}
    methods["moe_lpr"]["routing"] = {"expert0_prob": {"original": [0.9, 0.96 + 0.01 * k],
                                                      "new": [0.3, 0.2]}}
    methods["moe_lpr_stage1"] = {"routing": {"expert0_prob": {"original": [0.3, 0.3],
                                                              "new": [0.25, 0.25]}}}
    per_seed[str(k)] = {"base": {"original_ppl": b}, "methods": methods}
  return {"per_seed": per_seed}


def test_scatter_points_are_the_seeds_mean_and_spread():
  res = results()
  points = ef.tradeoff_points(res)
  for m, vals in METHODS.items():
    ret = [b / o for b, (o, _) in zip(BASE, vals)]
    gain = [g for _, g in vals]
    p = points[m]
    assert p["retention"] == pytest.approx(np.mean(ret))
    assert p["retention_sd"] == pytest.approx(np.std(ret, ddof=1))
    assert p["gain"] == pytest.approx(np.mean(gain)) and p["gain_sd"] == pytest.approx(np.std(gain, ddof=1))
    assert p["seeds"] == 3
  # What the scatter draws: gain on x, retention on y, in percent, with the sds as error bars.
  xy = ef.scatter_xy(points)
  assert xy["moe_lpr"] == pytest.approx((45.0, 100 * np.mean([10 / 10.5, 1.0, 1.0]),
                                         5.0, 100 * np.std([10 / 10.5, 1.0, 1.0], ddof=1)))
  assert points["moe_lpr"]["retention"] > points["dense_ct"]["retention"]
  # An injected error moves the point: one seed's full-CT ppl doubled lowers its retention.
  res["per_seed"]["1"]["methods"]["dense_ct"]["original_ppl"] *= 2
  assert ef.tradeoff_points(res)["dense_ct"]["retention"] < points["dense_ct"]["retention"]


def test_scatter_and_lpr_figures_are_written(tmp_path):
  res = results()
  path = ef.tradeoff_scatter(ef.tradeoff_points(res), str(tmp_path / "t.png"))
  assert path and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  series = ef.lpr_routing_series(res)
  mean, sd = series["stage2"]["original"]
  assert mean == pytest.approx([0.9, 0.97]) and sd == pytest.approx([0.0, 0.01])
  assert series["stage1"]["new"][0] == pytest.approx([0.25, 0.25])
  assert ef.lpr_routing_figure(res, str(tmp_path / "l.png"), 0.95)
  assert os.path.getsize(tmp_path / "l.png") > 1000


def test_spread_out_check_compares_the_quarters():
  rising = [0.2, 0.22, 0.25, 0.3, 0.33, 0.38, 0.42, 0.45]
  ok = ef.spread_out_check(rising)
  assert ok["status"] == "PASS" and ok["layers_per_quarter"] == 2
  assert ok["first_quarter"] == pytest.approx(0.21) and ok["last_quarter"] == pytest.approx(0.435)
  bad = ef.spread_out_check(rising[::-1])  # an injected decreasing profile
  assert bad["status"] == "FAIL" and bad["last_quarter"] < bad["first_quarter"]
  assert ef.spread_out_check([0.4])["status"] == "N/A"


def test_spread_out_summary_over_seeds():
  def rt(profile, qaa):
    return {"layers": [0, 1, 2, 3], "experts": ["Synthetic A", "Synthetic B"],
            "average": {"own_share": profile, "uniform_share": 0.5},
            "languages": {"qaa": {"own_share": qaa, "own_expert_name": "Synthetic A"}}}
  res = spread_out.summarize({0: rt([0.3, 0.3, 0.4, 0.5], [0.2, 0.3, 0.4, 0.5]),
                              1: rt([0.5, 0.4, 0.3, 0.3], [0.4, 0.3, 0.4, 0.5])})
  assert res["own_share_mean"] == pytest.approx([0.4, 0.35, 0.35, 0.4])
  assert res["own_share_sd"][0] == pytest.approx(0.2 / math.sqrt(2))
  assert res["own_share_by_language"]["qaa"] == pytest.approx([0.3, 0.3, 0.4, 0.5])
  assert [v["check"]["status"] for v in res["per_seed"].values()] == ["PASS", "FAIL"]
  assert res["check"]["status"] == "FAIL" and res["check"]["held_in_seeds"] == 1  # 0.4 vs 0.4


def test_new_claims_follow_their_numbers():
  def claims(lpr_gain, converged):
    m = {k: {"original_change": c, "new_gain": g} for k, c, g in (
        ("dense_ct", 1.5, 0.6), ("post_moe", 0.8, 0.6), ("moe_lpr", 0.01, lpr_gain),
        ("moe_ct", 0.05, 0.3))}
    m["moe_lpr"]["review"] = review(converged, [0.97, 0.96 if converged else 0.9])
    m["post_moe"]["routing"] = None
    return {c["id"]: c for c in expand_report.claims({"methods": m})}
  c = claims(0.7, True)
  assert c["full_ct_forgets"]["status"] == "PASS" and "retention 40.0%" in c["full_ct_forgets"]["numbers"]
  assert c["moe_lpr_keeps_original"]["status"] == "PASS"
  assert c["moe_ct_keeps_original"]["status"] == "FAIL"
  assert c["moe_lpr_gains_more"]["status"] == "PASS"
  assert c["lpr_stage2_converges"]["status"] == "PASS"
  assert "[0.970, 0.960]" in c["lpr_stage2_converges"]["numbers"]
  c = claims(0.5, False)
  assert c["moe_lpr_gains_more"]["status"] == "FAIL"
  assert c["lpr_stage2_converges"]["status"] == "FAIL" and "at the cap" in c["lpr_stage2_converges"]["numbers"]
  assert c["own_share_rises"]["status"] == "N/A"
