"""Sources (JSONL -> ArrayRecord via tfds, no TF) and the grain pipeline: values, not just shapes."""

import collections
import json
import os
import sys

import numpy as np
import pytest

from medmoe_jax import config as cfg_lib
from medmoe_jax.data import corpus, pipeline, sources, tokenizer
from medmoe_jax.data.chat import ChatTemplate

LANGS = ["en", "zh", "ar", "hi", "th", "sw"]


@pytest.fixture(scope="module")
def tok():
  return tokenizer.load_tokenizer("sample")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return sources.build_text_source(sources.sample_files(), tmp_path_factory.mktemp("ds"), "sample_text")


@pytest.fixture(scope="module")
def docs_by_lang(tok):
  """lang -> list of BOS + ids + EOS of every sample record."""
  out = collections.defaultdict(list)
  for path in sources.sample_files():
    for rec in sources.read_jsonl(path):
      out[rec["lang"]].append((tok.bos_id, *tok.encode(rec["text"]), tok.eos_id))
  return out


def _write_jsonl(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def _rec(text, lang="en", source="t"):
  return json.dumps({"text": text, "lang": lang, "source": source}, ensure_ascii=False)


def _segments(batch):
  """[(lang_id, tokens tuple)] of every segment of every row, checking the packing invariants."""
  out = []
  for r in range(batch["tokens"].shape[0]):
    seg, pos = batch["segment_ids"][r], batch["positions"][r]
    toks, lang, mask = batch["tokens"][r], batch["lang_ids"][r], batch["loss_mask"][r]
    pad = seg == 0
    assert (toks[pad] == 0).all() and (lang[pad] == -1).all() and (pos[pad] == 0).all()
    np.testing.assert_array_equal(mask, (~pad).astype(np.int32))
    real = np.flatnonzero(~pad)
    if not real.size:  # an empty row pads the last batch of a finite stream
      continue
    assert real[-1] == real.size - 1  # real tokens first, padding after
    ids = seg[~pad]
    assert (np.diff(ids) >= 0).all() and (np.diff(ids) <= 1).all() and ids[0] == 1
    for s in np.unique(ids):
      where = seg == s
      np.testing.assert_array_equal(pos[where], np.arange(where.sum()))
      assert len(set(lang[where].tolist())) == 1 and lang[where][0] >= 0
      out.append((int(lang[where][0]), tuple(toks[where].tolist())))
  return out


# ---------------------------------------------------------------- sources


def test_sample_files_cover_the_20_languages():
  names = sorted(os.path.basename(p)[:-6] for p in sources.sample_files())
  assert names == sorted("en zh fr hi es ar ru ja ko de it pt vi th sw ha mg ceb he uk".split())


def test_build_writes_array_record_without_tensorflow(built):
  assert "tensorflow" not in sys.modules
  train, val = built["train"], built["validation"]
  n_total = sum(1 for p in sources.sample_files() for _ in sources.read_jsonl(p))
  n_val = sum(
      1 for p in sources.sample_files() for i, _ in enumerate(sources.read_jsonl(p)) if i % 10 == 0
  )
  assert len(val) == n_val and len(train) == n_total - n_val
  assert [val[i]["lang"] for i in range(len(val))] == list(val.record_langs)
  assert set(train[0]) == {"text", "lang", "source", "prompt_spans"}
  assert isinstance(train[0]["text"], str) and train[0]["prompt_spans"] == []


def test_split_every_tenth_record_and_order(tmp_path):
  f = _write_jsonl(tmp_path / "a.jsonl", [_rec(f"doc {i}") for i in range(25)])
  ds = sources.build_text_source([f], tmp_path / "out", "split_test")
  assert [ds["validation"][i]["text"] for i in range(3)] == ["doc 0", "doc 10", "doc 20"]
  assert [r["text"] for r in ds["train"].__getitems__(range(len(ds["train"])))] == [
      f"doc {i}" for i in range(25) if i % 10
  ]
  assert list(ds["train"].record_langs) == ["en"] * 22


def test_build_is_noop_when_inputs_unchanged_and_rebuilds_when_changed(tmp_path):
  f = _write_jsonl(tmp_path / "a.jsonl", [_rec("alpha"), _rec("beta"), _rec("gamma")])
  out = tmp_path / "out"
  sources.build_text_source([f], out, "noop")
  version_dir = out / "noop" / sources.FORMAT_VERSION
  stamp = {p.name: p.stat().st_mtime_ns for p in version_dir.iterdir()}
  ds = sources.build_text_source([f], out, "noop")
  assert {p.name: p.stat().st_mtime_ns for p in version_dir.iterdir()} == stamp
  assert [ds["train"][i]["text"] for i in range(2)] == ["beta", "gamma"]

  _write_jsonl(tmp_path / "a.jsonl", [_rec("alpha"), _rec("delta", lang="de")])
  ds = sources.build_text_source([f], out, "noop")
  assert len(ds["train"]) == 1 and ds["train"][0] == {"text": "delta", "lang": "de", "source": "t", "prompt_spans": []}


@pytest.mark.parametrize(
    "lines, where, what",
    [
        ([_rec("ok"), '{"text": "broken", "lang": '], ":2:", "malformed JSON"),
        ([_rec("ok"), _rec("ok"), json.dumps({"lang": "en"})], ":3:", "'text'"),
        ([json.dumps({"text": "no language"})], ":1:", "'lang'"),
        ([json.dumps({"text": "", "lang": "en"})], ":1:", "'text'"),
        (["", "   "], ":1:", "empty file"),
    ],
)
def test_bad_input_names_file_line_field(tmp_path, lines, where, what):
  f = _write_jsonl(tmp_path / "bad.jsonl", lines)
  with pytest.raises(ValueError) as e:
    sources.build_text_source([f], tmp_path / "out", "bad")
  assert f"{f}{where}" in str(e.value) and what in str(e.value)
  assert not (tmp_path / "out" / "bad" / sources.FORMAT_VERSION).exists()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
  f = _write_jsonl(tmp_path / "a.jsonl", [_rec("alpha")])
  foreign = tmp_path / "out" / "mine" / sources.FORMAT_VERSION
  foreign.mkdir(parents=True)
  (foreign / "precious.txt").write_text("keep")
  with pytest.raises(ValueError, match="not written by medmoe_jax"):
    sources.build_text_source([f], tmp_path / "out", "mine")
  assert (foreign / "precious.txt").read_text() == "keep"


def test_bad_dataset_name(tmp_path):
  with pytest.raises(ValueError, match="dataset name"):
    sources.build_text_source(sources.sample_files(), tmp_path, "Bad-Name")


# ---------------------------------------------------------------- mixture weights


def test_mixture_weights_temperature():
  w1 = pipeline.mixture_weights({"en": 100, "sw": 1}, 1.0)
  assert w1["en"] == pytest.approx(100 / 101) and w1["sw"] == pytest.approx(1 / 101)
  w2 = pipeline.mixture_weights({"en": 100, "sw": 1}, 2.0)
  assert w2["en"] == pytest.approx(10 / 11) and w2["sw"] == pytest.approx(1 / 11)
  winf = pipeline.mixture_weights({"en": 100, "sw": 1, "zh": 50}, 1e9)
  assert all(v == pytest.approx(1 / 3) for v in winf.values())
  with pytest.raises(ValueError, match="temperature"):
    pipeline.mixture_weights({"en": 1}, 0.0)
  with pytest.raises(ValueError, match="'sw'"):
    pipeline.mixture_weights({"en": 1, "sw": 0})


def test_temperature_changes_language_frequency(tok):
  # In-memory source (a plain list): 90 en documents, 10 sw.
  src = [{"text": f"fever {i}", "lang": "en"} for i in range(90)]
  src += [{"text": f"homa {i}", "lang": "sw"} for i in range(10)]

  def sw_share(temperature):
    ds = pipeline.make_lm_dataset(
        src, languages=["en", "sw"], tokenizer=tok, seq_len=32, batch_size=4, seed=3,
        temperature=temperature,
    )
    it = iter(ds)
    counts = collections.Counter(lang for _ in range(10) for lang, _ in _segments(next(it)))
    return counts[1] / (counts[0] + counts[1])

  assert sw_share(1.0) == pytest.approx(0.1, abs=0.02)  # natural: 10 / 100
  assert sw_share(1e6) == pytest.approx(0.5, abs=0.02)  # flat


# ---------------------------------------------------------------- pipeline


def test_batch_format_and_packing(built, tok, docs_by_lang):
  ds = pipeline.make_lm_dataset(
      built["train"], languages=LANGS, tokenizer=tok, seq_len=1024, batch_size=4, seed=0
  )
  it = iter(ds)
  seen = 0
  for _ in range(4):
    b = next(it)
    assert set(b) == {"tokens", "targets", "segment_ids", "positions", "lang_ids", "loss_mask"}
    np.testing.assert_array_equal(b["targets"], b["tokens"])  # text: every target is the token
    for v in b.values():
      assert v.shape == (4, 1024) and v.dtype == np.int32
    for lang_id, toks in _segments(b):
      # seq_len 1024 holds every sample document whole: each segment is one exact document
      # of the language its lang_ids name.
      assert toks in docs_by_lang[LANGS[lang_id]]
      seen += 1
  assert seen >= 16


def test_long_documents_are_split_into_chunks(built, tok, docs_by_lang):
  langs = ["zh", "en"]
  ds = pipeline.make_lm_dataset(
      built["train"], languages=langs, tokenizer=tok, seq_len=64, batch_size=3, seed=1,
      repeat=False,
  )
  segs = [s for b in ds for s in _segments(b)]
  assert all(len(t) <= 64 for _, t in segs)
  train_docs = {lang: [d for i, d in enumerate(docs_by_lang[lang]) if i % 10] for lang in langs}
  assert sum(t[0] == tok.bos_id for _, t in segs) == sum(len(v) for v in train_docs.values())
  assert sum(len(t) for _, t in segs) == sum(len(d) for v in train_docs.values() for d in v)
  for lang_id, lang in enumerate(langs):  # every token of each language, nothing else
    got = collections.Counter(x for i, t in segs if i == lang_id for x in t)
    assert got == collections.Counter(x for d in train_docs[lang] for x in d)


def test_language_subset_and_missing_language(built, tok, docs_by_lang):
  ds = pipeline.make_lm_dataset(
      built["train"], languages=["th", "zh"], tokenizer=tok, seq_len=1024, batch_size=2, seed=0
  )
  it = iter(ds)
  segs = [s for _ in range(5) for s in _segments(next(it))]
  assert {lang for lang, _ in segs} == {0, 1}
  assert all(t in docs_by_lang[["th", "zh"][lang]] for lang, t in segs)
  with pytest.raises(TypeError, match="one split"):
    pipeline.make_lm_dataset(built, languages=["en"], tokenizer=tok, seq_len=64, batch_size=2, seed=0)
  with pytest.raises(ValueError, match=r"\['xx'\]"):
    pipeline.make_lm_dataset(
        built["train"], languages=["en", "xx"], tokenizer=tok, seq_len=64, batch_size=2, seed=0
    )


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_deterministic_and_exact_resume(built, tok):
  def make(seed):
    return pipeline.make_lm_dataset(
        built["train"], languages=LANGS, tokenizer=tok, seq_len=96, batch_size=3, seed=seed,
        temperature=2.0,
    )

  it = iter(make(7))
  first = _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # JSON round trip, as checkpoints store it
  rest = _take(it, 5)

  restored = iter(make(7))
  restored.set_state(state)
  _assert_same(_take(restored, 5), rest)
  _assert_same(_take(iter(make(7)), 3), first)
  assert not all((a["tokens"] == b["tokens"]).all() for a, b in zip(first, _take(iter(make(8)), 3)))


def test_shards_partition_an_epoch(built, tok):
  def docs(shard_index, shard_count):
    ds = pipeline.make_lm_dataset(
        built["train"], languages=LANGS, tokenizer=tok, seq_len=1024, batch_size=2, seed=5,
        shard_index=shard_index, shard_count=shard_count, repeat=False,
    )
    return collections.Counter(t for b in ds for _, t in _segments(b))

  whole, a, b = docs(0, 1), docs(0, 2), docs(1, 2)
  assert a + b == whole and not (set(a) & set(b))
  assert sum(whole.values()) == sum(c for lang, c in built["train"].lang_counts().items() if lang in LANGS)


def test_eval_batches_per_language(built, tok, docs_by_lang):
  val = built["validation"]
  for lang in ["zh", "ar"]:
    ds = pipeline.make_eval_batches(
        val, languages=LANGS, tokenizer=tok, seq_len=1024, batch_size=4, language=lang
    )
    batches = list(ds)
    _assert_same(batches, list(ds))  # deterministic, finite, re-iterable
    segs = [s for b in batches for s in _segments(b)]
    assert all(b["tokens"].shape == (4, 1024) for b in batches)
    assert {i for i, _ in segs} == {LANGS.index(lang)}
    expected = [d for i, d in enumerate(docs_by_lang[lang]) if i % 10 == 0]
    assert sorted(t for _, t in segs) == sorted(expected)

  all_langs = list(pipeline.make_eval_batches(val, languages=LANGS, tokenizer=tok, seq_len=512, batch_size=8))
  n_docs = sum(1 for b in all_langs for _, t in _segments(b) if t[0] == tok.bos_id)
  assert n_docs == sum(val.lang_counts()[lang] for lang in LANGS)
  with pytest.raises(ValueError, match="'fr' is not in languages"):
    pipeline.make_eval_batches(val, languages=LANGS, tokenizer=tok, seq_len=64, batch_size=2, language="fr")


# ---------------------------------------------------------------- weighted sources, supervised records


def test_group_weights_temperature_then_source_weights():
  groups = [("en", "a", 1.0, 100), ("en", "b", 3.0, 100), ("sw", "c", 2.0, 10)]
  p = pipeline.group_weights(groups, 1.0)  # m_en = 400, m_sw = 20
  assert p == pytest.approx([400 / 420 * 0.25, 400 / 420 * 0.75, 20 / 420])
  p = pipeline.group_weights(groups, 2.0)  # p_l ~ sqrt(m_l)
  z = 20 + 20 ** 0.5
  assert p == pytest.approx([20 / z * 0.25, 20 / z * 0.75, 20 ** 0.5 / z])
  # Equal weights reduce to the per-language temperature mixture.
  same = pipeline.group_weights([("en", "a", 1.0, 90), ("sw", "a", 1.0, 10)], 2.0)
  assert same == pytest.approx(list(pipeline.mixture_weights({"en": 90, "sw": 10}, 2.0).values()))


def test_source_weights_change_source_frequency(tok):
  part = lambda tag, n: [{"text": f"{tag} {i}", "lang": "en"} for i in range(n)]  # noqa: E731
  src = sources.ConcatSource([("a", part("alpha", 40), 3.0), ("b", part("beta", 40), 1.0),
                              ("c", part("gamma", 40), 0.0)])
  ds = pipeline.make_lm_dataset(src, languages=["en"], tokenizer=tok, seq_len=64, batch_size=4,
                                seed=0)
  it = iter(ds)
  words = collections.Counter(tok.decode(t).split()[0] for _ in range(12) for _, t in _segments(next(it)))
  assert words["gamma"] == 0  # weight 0: validation only
  assert words["alpha"] / (words["alpha"] + words["beta"]) == pytest.approx(0.75, abs=0.03)


def test_supervised_prompts_get_no_loss(tmp_path, tok):
  qa = [{"question": f"Question {i}: what treats malaria?", "answer": f"Artemisinin, dose {i}.",
         "lang": "en"} for i in range(20)]
  chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                       {"role": "user", "content": "Fever?"}, {"role": "assistant", "content": "Rest."}],
          "lang": "en"}
  f = _write_jsonl(tmp_path / "sft.jsonl", [json.dumps(r) for r in qa + [chat, {"text": "Plain.", "lang": "en"}]])
  built = sources.build_source(sources.SourceSpec("sft", (f,)), tmp_path / "out", validation_every=0,
                               template=ChatTemplate("plain"))  # the default "apollo": test_chat.py
  ds = pipeline.make_lm_dataset(built["train"], languages=["en"], tokenizer=tok, seq_len=512,
                                batch_size=2, seed=0, repeat=False)
  seen = collections.Counter()
  for b in ds:
    for r in range(2):
      for s in set(b["segment_ids"][r].tolist()) - {0}:
        where = b["segment_ids"][r] == s
        toks, mask = b["tokens"][r][where], b["loss_mask"][r][where]
        prompt, target = tok.decode(toks[mask == 0]), tok.decode(toks[mask == 1])
        assert toks[0] == tok.bos_id and toks[-1] == tok.eos_id and mask[-1] == 1
        if prompt.startswith("Question"):
          i = int(prompt.split()[1][:-1])
          assert (prompt, target) == (f"Question {i}: what treats malaria?\n", f"Artemisinin, dose {i}.")
          seen["qa"] += 1
        elif prompt:
          assert (prompt, target) == ("Hi\nFever?\n", "Hello.\nRest.")
          seen["chat"] += 1
        else:
          assert target == "Plain." and mask.all()  # a text record: every token is a target
          seen["text"] += 1
  assert seen == {"qa": 20, "chat": 1, "text": 1}


# ---------------------------------------------------------------- a config's corpus


def _corpus_config(tmp_path, extra_sources=()):
  from conftest import load_config
  c = load_config("post_moe")
  c.data.update(dict(data_dir=str(tmp_path / "data"), seq_len=64, batch_size=4, temperature=2.0))
  c.data.sources = ["sample", *extra_sources]
  return c


def test_resume_gives_batches_k_to_k_plus_5_of_the_uninterrupted_run(tmp_path, tok):
  sft = _write_jsonl(tmp_path / "qa.jsonl", [json.dumps(
      {"question": f"Q{i} fever?", "answer": f"A{i} paracetamol.", "lang": lang})
      for i in range(30) for lang in ("en", "sw")])
  c = _corpus_config(tmp_path, [{"paths": sft, "name": "qa", "weight": 2.0}])
  k = 4

  def run():
    return iter(corpus.train_dataset(cfg_lib.data_spec(c, str(tmp_path / "run")), tok))

  uninterrupted = _take(run(), k + 6)
  first = run()
  _assert_same(_take(first, k), uninterrupted[:k])
  state = json.loads(json.dumps(first.get_state()))  # as the Orbax checkpoint stores it
  resumed = run()  # a new process: new dataset, new iterator
  resumed.set_state(state)
  _assert_same(_take(resumed, 6), uninterrupted[k:])
  assert any(b["loss_mask"][b["segment_ids"] > 0].min() == 0 for b in uninterrupted)  # SFT seen
  c.seed = 1
  assert not all((a["tokens"] == b["tokens"]).all() for a, b in zip(_take(run(), 3), uninterrupted))


def test_prepare_counts_and_is_a_noop_when_built(tmp_path, tok, docs_by_lang):
  c = _corpus_config(tmp_path)
  stats = corpus.prepare(cfg_lib.data_spec(c, str(tmp_path / "run")), tok, log=None)
  assert stats["built_now"] == ["sample"]
  src = stats["sources"]["sample"]
  val = {lang: len([d for i, d in enumerate(docs) if i % 10 == 0]) for lang, docs in docs_by_lang.items()}
  assert src["documents"]["validation"] == val
  assert src["documents"]["train"] == {lang: len(d) - val[lang] for lang, d in docs_by_lang.items()}
  for lang in ("zh", "sw"):  # tokens: the tokenizer's ids of every train document, no BOS/EOS
    expected = sum(len(d) - 2 for i, d in enumerate(docs_by_lang[lang]) if i % 10)
    assert src["tokens"]["train"][lang]["tokens"] == expected
    assert stats["by_language"][lang]["train_tokens"] == expected
  probs = [v["mixture_probability"] for v in stats["by_language"].values()]
  assert sum(probs) == pytest.approx(1.0) and stats["missing_languages"] == []
  data = tmp_path / "data"
  stamp = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
  again = corpus.prepare(cfg_lib.data_spec(c, str(tmp_path / "run")), tok, log=None)
  assert again["built_now"] == [] and {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == stamp
  assert json.loads(open(corpus.stats_path(cfg_lib.data_spec(c, str(tmp_path / "run")))).read()) == {
      k: v for k, v in again.items() if k != "built_now"}


def test_concat_packing_fills_rows_and_resumes(tok, docs_by_lang):
  src = [{"text": t, "lang": lang} for lang in ("en", "zh") for t in
         [tok.decode(d) for d in docs_by_lang[lang]]]
  kw = dict(languages=["en", "zh"], tokenizer=tok, seq_len=100, batch_size=3, seed=2, packing="concat")
  batches = list(pipeline.make_lm_dataset(src, repeat=False, **kw))
  rows = [r for b in batches for r in range(3) if b["segment_ids"][r].any()]
  full = sum(int((b["segment_ids"][r] > 0).all()) for b in batches for r in range(3))
  assert full >= len(rows) - 1  # every row is full but the very last
  got = collections.Counter(x for b in batches for x in b["tokens"][b["segment_ids"] > 0].tolist())
  assert got == collections.Counter(x for lang in ("en", "zh") for d in docs_by_lang[lang] for x in d)
  it = iter(pipeline.make_lm_dataset(src, **kw))
  _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))
  rest = _take(it, 4)
  resumed = iter(pipeline.make_lm_dataset(src, **kw))
  resumed.set_state(state)
  _assert_same(_take(resumed, 4), rest)
