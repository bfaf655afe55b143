"""The expansion experiment's settings: each corpus's defaults, --quick, and the checks that run
before any compute."""
import pytest

from medmoe_jax.experiments import expand


def test_defaults_follow_the_corpus():
  syn, sample = expand.Settings.make(), expand.Settings.make(corpus="sample")
  assert (syn.corpus, syn.original, syn.new, syn.base_steps) == (
      "synthetic", ("qaa", "qab", "qba"), ("qca", "qcb", "qda"), 600)
  assert (sample.original, sample.new, sample.base_steps) == (("en", "zh", "es"), ("sw", "ha", "mg"), 120)
  assert expand.Settings.make(corpus="sample", base_steps=50, new=("sw",)).base_steps == 50
  quick = expand.Settings.make(True, corpus="sample")
  assert quick.quick and quick.base_steps == 20 and quick.lpr_stage2_cap == 6
  assert syn.lpr_steps == (syn.steps, syn.lpr_stage2_cap)  # stage 1 is the budget
  assert expand.family_of(syn, ["qaa", "qda"]) == {"qaa": "Synthetic A", "qda": "Synthetic D"}
  assert expand.family_of(sample, ["en", "sw"]) == {"en": "Indo-European", "sw": "Niger-Congo"}


@pytest.mark.parametrize("overrides,message", [
    (dict(corpus="web"), "--corpus: 'web'"),
    (dict(base_new_share=1.0), r"--base_new_share must be in \[0, 1\)"),
    (dict(lpr_stage2_cap=0), "--lpr_stage2_cap and --lpr_stage2_check must be >= 1"),
    (dict(corpus_families=21), "--corpus_families/--corpus_languages_per_family: families must"),
    (dict(original=("qaa",), new=("qda", "qab")), "--new: 'qab' is Synthetic A"),
])
def test_bad_settings_are_refused(overrides, message):
  with pytest.raises(expand.ExperimentError, match=message):
    expand.check(expand.Settings.make(**overrides))
