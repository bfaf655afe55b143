"""The synthetic corpus: deterministic from its seed, the size asked, family structure that can be
measured, the same content in every language, and a corpus the training pipeline trains on."""
import collections
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from medmoe_jax import config as cfg_lib
from medmoe_jax.data import sources, synthetic

SMALL = synthetic.Settings(seed=3, families=3, languages_per_family=3, docs=40)


@pytest.fixture(scope="module")
def corpus():
  return synthetic.Corpus(SMALL)


def _digest(path):
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_languages(tmp_path):
  a = synthetic.Corpus(SMALL).write(tmp_path / "a")
  b = synthetic.Corpus(SMALL).write(tmp_path / "b")
  assert a == b
  for code in a["custom_families"]:
    assert _digest(tmp_path / "a" / f"{code}.jsonl") == _digest(tmp_path / "b" / f"{code}.jsonl")
  other = synthetic.Corpus(synthetic.Settings(seed=4, families=3, languages_per_family=3, docs=40))
  mine = synthetic.Corpus(SMALL)
  assert other.document("qaa", 0) != mine.document("qaa", 0)
  # Not just the content: the words differ.
  assert other.languages["qaa"].lexicon["fever"] != mine.languages["qaa"].lexicon["fever"]


def test_sizes_codes_and_files_as_asked(tmp_path):
  s = synthetic.Settings(seed=0, families=2, languages_per_family=2, docs=7,
                         sizes=(("qab", 0), ("qba", 23)))
  meta = synthetic.Corpus(s).write(tmp_path)
  assert meta["families"] == {"Synthetic A": ["qaa", "qab"], "Synthetic B": ["qba", "qbb"]}
  assert meta["docs"] == {"qaa": 7, "qab": 0, "qba": 23, "qbb": 7}
  for code, n in meta["docs"].items():
    lines = open(tmp_path / f"{code}.jsonl", encoding="utf-8").read().splitlines()
    assert len(lines) == n
    if n:  # the project's strict reader of the embedded sample reads it
      recs = list(sources.read_jsonl(tmp_path / f"{code}.jsonl"))
      assert {r["lang"] for r in recs} == {code} and all(r["text"].strip() for r in recs)
  assert synthetic.load_metadata(tmp_path) == json.load(open(tmp_path / "languages.json"))
  with pytest.raises(ValueError, match=r"sizes: 'qzz' is not a language of this corpus"):
    synthetic.Corpus(synthetic.Settings(families=2, sizes=(("qzz", 3),)))
  with pytest.raises(ValueError, match="families must be in 1..20"):
    synthetic.Corpus(synthetic.Settings(families=21))


def test_documents_grow_with_the_count_asked(corpus):
  # Streaming: the first n documents do not depend on how many are asked for.
  assert list(corpus.documents("qba", 5)) == list(corpus.documents("qba", 12))[:5]
  chars = sum(len(d) for d in corpus.documents("qaa", 40))
  assert 40 * 150 < chars < 40 * 3000  # a few clinical cases a document


def test_family_structure_is_measurable(corpus):
  """Character-trigram similarity: every pair within a family above every pair across."""
  sims = synthetic.similarity(corpus, docs=40)
  fam = corpus.custom_families()
  within = [v for (a, b), v in sims.items() if fam[a] == fam[b]]
  across = [v for (a, b), v in sims.items() if fam[a] != fam[b]]
  assert len(within) == 9 and len(across) == 27
  assert min(within) > max(across), (min(within), max(across))
  contrast = synthetic.family_contrast(corpus, sims)
  assert contrast["within"]["mean"] > 3 * contrast["across"]["mean"], contrast
  # Shared words (lexicon forms) follow the same structure.
  def shared(a, b):
    la, lb = corpus.languages[a].lexicon, corpus.languages[b].lexicon
    return sum(la[k] == lb[k] for k in la) / len(la)
  assert min(shared(a, b) for (a, b) in sims if fam[a] == fam[b]) > \
      max(shared(a, b) for (a, b) in sims if fam[a] != fam[b])


def test_no_family_structure_without_families(corpus):
  """The injected error: with every word coined per language (innovate=1, no deep roots) the
  families share only phonology and spelling, and the assertions above fail."""
  flat = synthetic.Corpus(synthetic.Settings(seed=3, families=3, languages_per_family=3, docs=40,
                                             innovate=1.0, keep_deep=0.0))
  c_flat = synthetic.family_contrast(flat, synthetic.similarity(flat, docs=40))
  c_real = synthetic.family_contrast(corpus, synthetic.similarity(corpus, docs=40))
  assert c_flat["within"]["min"] < c_flat["across"]["max"], c_flat
  assert c_flat["within"]["mean"] < 3 * c_flat["across"]["mean"], c_flat
  assert c_flat["within"]["mean"] < 0.7 * c_real["within"]["mean"], (c_flat, c_real)
  la, lb = flat.languages["qaa"].lexicon, flat.languages["qab"].lexicon
  assert sum(la[k] == lb[k] for k in la) / len(la) < 0.05


def test_the_same_content_in_every_language(corpus):
  """Document i says the same thing everywhere: the same sentences, numbers, and in sentence j
  the word of every concept sentence j expresses."""
  content = synthetic.document_content(SMALL.seed, 5)
  flat = [c for para in content for c in para]
  for code, lang in corpus.languages.items():
    doc = corpus.document(code, 5)
    sentences = re.findall(r"[^.?]+[.?]", doc)
    assert len(sentences) == len(flat), code
    assert collections.Counter(re.findall(r"\d+", doc)) == collections.Counter(
        re.findall(r"\d+", corpus.document("qaa", 5)))
    for clause, sentence in zip(flat, sentences):
      words = sentence.lower()
      for np in (clause.subj, clause.obj, clause.bare, *(np for _, np in clause.obl)):
        for part in (np, *(np.coord if np else ())):
          if part is None or part.literal:
            continue
          form = synthetic._spell(lang.lexicon[part.head], lang.orthography)
          assert form in words, (code, part.head, form, sentence)
      assert sentence.endswith("?") == clause.question
  # Not parallel: other content per language.
  free = synthetic.Corpus(synthetic.Settings(seed=3, families=3, languages_per_family=3,
                                             docs=40, parallel=False))
  nums = {code: re.findall(r"\d+", free.document(code, 5)) for code in free.languages}
  assert len({tuple(v) for v in nums.values()}) > 1


def test_grammar_differs_by_family_and_languages_depart_once(corpus):
  g = {code: lang.grammar for code, lang in corpus.languages.items()}
  for fam, codes in corpus.table.items():
    base = g[codes[0]]
    for code in codes[1:]:
      assert sum(g[code][k] != base[k] for k in base) <= 2, (code, g[code], base)
  assert len({json.dumps(g[codes[0]], sort_keys=True) for codes in corpus.table.values()}) == 3


def test_configure_points_a_method_config_at_the_corpus(tmp_path):
  from conftest import load_config
  meta = synthetic.Corpus(synthetic.Settings(families=2, languages_per_family=2, docs=5)).write(tmp_path)
  c = load_config("post_moe")
  synthetic.configure(c, tmp_path, ["qaa", "qbb"])
  cfg_lib.validate(c)
  a = cfg_lib.expert_assignment(c)
  assert a.expert_names == ("Synthetic A", "Synthetic B") and a.lang_to_expert == (0, 1)
  assert c.data.sources == os.path.join(str(tmp_path), "*.jsonl")
  assert dict(c.languages.custom_families) == meta["custom_families"]
  with pytest.raises(ValueError, match=r"language 'qzz' is not in the synthetic corpus"):
    synthetic.configure(c, tmp_path, ["qzz"])
  with pytest.raises(ValueError, match="not a synthetic corpus"):
    synthetic.configure(c, tmp_path / "nothing")


@pytest.mark.e2e
def test_cli_writes_corpus_config_wrapper_and_refuses_bad_sizes(tmp_path):
  out = tmp_path / "syn"
  r = subprocess.run([sys.executable, "-m", "medmoe_jax.data.synthetic", "--out", str(out),
                      "--families", "2", "--languages_per_family", "2", "--docs", "6",
                      "--sizes", "qaa=9", "--stats"], capture_output=True, text=True, check=True)
  assert "character-trigram cosine within families" in r.stdout
  assert sum(1 for _ in open(out / "qaa.jsonl")) == 9 and sum(1 for _ in open(out / "qbb.jsonl")) == 6
  # DIR/config.py is what --config=DIR/config.py:configs/dense.py loads.
  import importlib.util
  spec = importlib.util.spec_from_file_location("syn_cfg", out / "config.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(str(REPO / "configs" / "dense.py"))
  assert c.name == "dense" and c.languages.use == ("qaa", "qab", "qba", "qbb")
  with pytest.raises(ValueError, match="name the method config after the colon"):
    mod.get_config(None)
  bad = subprocess.run([sys.executable, "-m", "medmoe_jax.data.synthetic", "--out", str(out),
                        "--sizes", "qaa=x"], capture_output=True, text=True)
  assert bad.returncode == 2 and "--sizes: 'qaa=x' is not CODE=DOCS" in bad.stderr


@pytest.mark.e2e
def test_pipeline_builds_and_trains_on_it(tmp_path):
  """A tiny Post-MoE model with the corpus's families as experts trains a few steps on it: the
  sources build, every language is in the batches, hybrid-k forces the family experts."""
  import jax

  from conftest import load_config
  from medmoe_jax import sharding
  from medmoe_jax.train import Trainer
  synthetic.Corpus(synthetic.Settings(families=2, languages_per_family=2, docs=30)).write(tmp_path / "syn")
  c = load_config("post_moe")
  synthetic.configure(c, tmp_path / "syn")
  c.model.update(dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64))
  c.moe.layers = "last:1"
  c.data.update(dict(seq_len=64, batch_size=8))
  c.train.update(dict(steps=4, log_every=1, checkpoint_every=4, async_checkpoint=False))
  with jax.default_prng_impl("rbg"):
    t = Trainer(c, str(tmp_path / "run"), mesh=sharding.make_mesh(c, jax.devices()[:1])).setup()
    t.run(progress=False)
    t.close()
  hist = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in hist] == [1, 2, 3, 4]
  assert all(r["loss"] == r["loss"] and 2.0 < r["loss"] < 12.0 for r in hist)
  assert hist[-1]["loss"] < hist[0]["loss"]
  langs = set()
  for r in hist:
    langs |= set(r.get("lang_loss", {}))
  assert langs == {"qaa", "qab", "qba", "qbb"}, langs
