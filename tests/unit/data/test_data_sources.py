"""Sources: formats, supervised records, config specs, bad input (raise / skip), language detection."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medmoe_jax.data import formats, langid, sources, specs
from medmoe_jax.data import chat as chat_lib

from conftest import REPO  # noqa: E402
# Untagged documents for the detector: real sample texts of four detectable languages.
DETECT_LANGS = ["en", "zh", "ar", "ru"]


def _texts(lang, n):
  path = next(p for p in sources.sample_files() if p.endswith(f"/{lang}.jsonl"))
  return [r["text"] for r in sources.read_jsonl(path)][:n]


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def _spec(paths, **kw):
  return specs.SourceSpec(name=kw.pop("name", "src"), paths=tuple(str(p) for p in paths), **kw)


RECORDS = [
    {"text": "Fever and cough.", "lang": "en", "source": "web"},
    {"question": "Dose of paracetamol?", "answer": "500 mg.", "lang": "en"},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Malaria vector?"},
                  {"role": "assistant", "content": "Anopheles."}], "lang": "en"},
    {"text": "高血压。", "lang": "zh-CN"},
]


def _records(path, kind="auto"):
  return [r for _, r in formats.iter_records(str(path), kind)]


# ---------------------------------------------------------------- formats and records


def test_the_same_records_from_json_jsonl_parquet_and_gzip(tmp_path):
  (tmp_path / "a.json").write_text(json.dumps(RECORDS, indent=2, ensure_ascii=False), "utf-8")
  _write(tmp_path / "a.jsonl", [json.dumps(r, ensure_ascii=False) for r in RECORDS])
  with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
    f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS))
  cols = ("text", "question", "answer", "lang", "source")
  table = pa.table({k: [r.get(k) for r in RECORDS] for k in cols}
                   | {"messages": [r.get("messages") for r in RECORDS]})
  pq.write_table(table, tmp_path / "a.parquet")
  expected = _records(tmp_path / "a.jsonl")
  assert len(expected) == 4
  for name in ("a.json", "a.jsonl.gz", "a.parquet"):
    assert _records(tmp_path / name) == expected, name
  # JSON arrays report the line each element starts on.
  assert [loc for loc, _ in formats.iter_items(str(tmp_path / "a.json"))] == [2, 7, 12, 29]


def test_supervised_records_render_prompt_spans():
  # The "plain" chat template (this project's earlier format; the default is "apollo").
  plain = chat_lib.ChatTemplate("plain")
  qa = formats.to_record({"question": "Dose?", "answer": "500 mg."}, template=plain)
  assert qa.text == "Dose?\n500 mg." and qa.prompt_spans == ((0, 6),)
  chat = formats.to_record({"messages": [
      {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Vector?"},
      {"role": "assistant", "content": "Anopheles."}, {"role": "user", "content": "Sure?"},
      {"role": "assistant", "content": "Yes."}]}, template=plain)
  assert chat.text == "Be brief.\nVector?\nAnopheles.\nSure?\nYes."
  assert [chat.text[a:b] for a, b in chat.prompt_spans] == ["Be brief.\nVector?\n", "Sure?\n"]
  sharegpt = formats.to_record({"conversations": [{"from": "human", "value": "Q"},
                                                  {"from": "gpt", "value": "A"}]}, template=plain)
  turns = formats.to_record(["Q", "A"], template=plain)  # a bare list alternates user, assistant
  assert sharegpt.text == turns.text == "Q\nA" and sharegpt.prompt_spans == turns.prompt_spans == ((0, 2),)
  assert formats.to_record("plain text") == formats.Record("plain text")
  with pytest.raises(formats.FieldError, match=r"messages\[0\]\.role.*'doctor'"):
    formats.to_record({"messages": [{"role": "doctor", "content": "x"}]})
  with pytest.raises(formats.FieldError, match="no non-empty assistant turn"):
    formats.to_record({"messages": [{"role": "user", "content": "x"}]})
  with pytest.raises(formats.FieldError, match="'text'"):
    formats.to_record({"question": "q", "answer": "a"}, kind="text")


def test_text_files_are_one_document_per_line(tmp_path):
  f = tmp_path / "ceb.txt"
  f.write_text("Ang hilanat.\n\nAng ubo.\r\n", encoding="utf-8")
  assert [r.text for r in _records(f)] == ["Ang hilanat.", "Ang ubo."]


# ---------------------------------------------------------------- specs


def test_parse_sources_forms_and_names():
  assert specs.parse_sources("sample") == [specs.SourceSpec("sample", ("sample",))]
  s = specs.parse_sources(["data/en/*.jsonl", "x/train.json", "y/train.parquet",
                           {"paths": "z/*.txt", "name": "lpr", "lang": "pt_BR", "weight": 2,
                            "detect": ["EN", "zh"], "kind": "sft"}])
  assert [x.name for x in s] == ["en", "train", "train_2", "lpr"]
  assert (s[3].lang, s[3].weight, s[3].detect, s[3].kind) == ("pt", 2.0, ("en", "zh"), "sft")
  assert [x.name for x in specs.parse_sources("a.jsonl, b.jsonl")] == ["a", "b"]


@pytest.mark.parametrize("value, match", [
    ([{"paths": "a.jsonl", "weight": -1}], r"\[0\]\.weight"),
    ([{"paths": "a.jsonl", "kind": "qa"}], r"\[0\]\.kind"),
    ([{"paths": "a.jsonl", "lnag": "en"}], r"\[0\]: unknown key 'lnag'"),
    (["a.jsonl", {"paths": []}], r"\[1\]\.paths"),
    ([{"paths": "a", "name": "x"}, {"paths": "b", "name": "x"}], r"\[1\]\.name"),
    ([{"paths": "a", "weight": 0}], "every source has weight 0"),
])
def test_parse_sources_errors_name_the_entry(value, match):
  with pytest.raises(ValueError, match=match):
    specs.parse_sources(value)


def test_config_validation_names_the_key():
  from medmoe_jax import config as cfg_lib
  c = cfg_lib.base_config()
  c.data.sources = [{"paths": "sample"}, {"paths": "x.jsonl", "lang": "klingon"}]
  with pytest.raises(cfg_lib.ConfigError, match=r"config\.data\.sources\[1\]\.lang.*'klingon'"):
    cfg_lib.validate(c)
  c.data.sources = "sample"
  c.data.on_error = "ignore"
  with pytest.raises(cfg_lib.ConfigError, match=r"config\.data\.on_error"):
    cfg_lib.validate(c)


# ---------------------------------------------------------------- bad input

GOOD = json.dumps({"text": "ok", "lang": "en"})


@pytest.mark.parametrize("name, content, line, kind, field_text", [
    ("a.jsonl", [GOOD, '{"text": "broken", "lang": '], 2, "malformed_json", "malformed JSON"),
    ("a.jsonl", [GOOD, GOOD, json.dumps({"lang": "en", "txt": "typo"})], 3, "missing_field", "'text'"),
    ("a.jsonl", [GOOD, json.dumps({"text": "x", "lang": "english"})], 2, "unknown_language", "'lang'"),
    ("a.jsonl", [GOOD, json.dumps({"text": 3, "lang": "en"})], 2, "bad_field", "'text'"),
    ("a.jsonl", ["", "  "], 1, "empty_file", "empty file"),
    ("a.json", ["[", GOOD, GOOD, "]"], 3, "malformed_json", "expected ',' or ']'"),
    ("a.json", ["[]"], 1, "empty_file", "empty file"),
    ("a.txt", [], 1, "empty_file", "empty file"),
])
def test_bad_input_raises_naming_file_line_field(tmp_path, name, content, line, kind, field_text):
  f = _write(tmp_path / name, content)
  with pytest.raises(ValueError) as e:
    sources.build_source(_spec([f], lang="en"), tmp_path / "out")
  assert str(e.value).startswith(f"{f}:{line}: ") and field_text in str(e.value)
  assert getattr(e.value, "kind", None) == kind
  assert not (tmp_path / "out" / "src" / sources.FORMAT_VERSION).exists()


def test_wrong_encoding_names_line_and_byte(tmp_path):
  f = tmp_path / "latin1.jsonl"
  f.write_bytes(GOOD.encode() + b"\n" + json.dumps({"text": "fi\u00e8vre", "lang": "fr"},
                                                   ensure_ascii=False).encode("latin-1") + b"\n")
  with pytest.raises(ValueError, match=rf"^{f}:2: not UTF-8 \(byte 0xe8"):
    sources.build_source(_spec([f]), tmp_path / "out")


def test_parquet_missing_column_names_the_row(tmp_path):
  f = tmp_path / "a.parquet"
  pq.write_table(pa.table({"content": ["a", "b"], "lang": ["en", "en"]}), f)
  with pytest.raises(ValueError, match=rf"^{f}:row 1: missing field 'text'"):
    sources.build_source(_spec([f]), tmp_path / "out")


def test_skip_counts_every_bad_record_and_keeps_the_rest(tmp_path):
  good = [json.dumps({"text": f"doc {i}", "lang": "en"}) for i in range(12)]
  lines = good[:5] + ['{"text": ', json.dumps({"lang": "en"}), json.dumps({"text": "x", "lang": "xx"})] + good[5:]
  f1 = _write(tmp_path / "mixed.jsonl", lines)
  f2 = _write(tmp_path / "empty.jsonl", [""])
  f3 = tmp_path / "bad.json"
  f3.write_text("[" + GOOD + ", {oops}]", encoding="utf-8")
  built = sources.build_source(_spec([f1, f2, f3], lang="en"), tmp_path / "out", on_error="skip")
  st = built.stats
  assert st["skipped"] == {"empty_file": 1, "malformed_json": 2, "missing_field": 1,
                           "unknown_language": 1}
  assert sum(sum(d.values()) for d in st["documents"].values()) == 13  # 12 + bad.json's first
  assert len(built["train"]) + len(built["validation"]) == 13
  assert any(m.startswith(f"{f1}:7: missing field 'text'") for m in st["skipped_examples"])
  # The same inputs with on_error="raise" fail at the first bad record.
  with pytest.raises(ValueError, match=f"{f1}:6: malformed JSON"):
    sources.build_source(_spec([f1, f2, f3], lang="en"), tmp_path / "out2")


# ---------------------------------------------------------------- languages


def test_detector_tags_untagged_records_and_counts_them(tmp_path):
  lines, truth = [], []
  for lang in DETECT_LANGS:
    for t in _texts(lang, 3):
      lines.append(json.dumps({"text": t}, ensure_ascii=False))
      truth.append(lang)
  lines.append(json.dumps({"text": "Tagged, so not detected.", "lang": "de"}))
  f = _write(tmp_path / "untagged.jsonl", lines)
  built = sources.build_source(_spec([f]), tmp_path / "out", detect=DETECT_LANGS + ["de"],
                               validation_every=0)
  assert built.stats["detected"] == {lang: 3 for lang in DETECT_LANGS}
  assert built.stats["detect_candidates"] == sorted(DETECT_LANGS + ["de"])
  train = built["train"]
  assert [train[i]["lang"] for i in range(len(train))] == truth + ["de"]
  assert train[0]["source"] == "src"  # records without `source` get the source's name


def test_undetectable_languages_must_be_declared(tmp_path):
  f = _write(tmp_path / "ceb.jsonl", [json.dumps({"text": t}) for t in _texts("ceb", 3)])
  assert "ceb" not in langid.detectable()
  with pytest.raises(ValueError, match=r"cannot detect: \['ceb'\].*Set `lang`"):
    sources.build_source(_spec([f]), tmp_path / "out", detect=["en", "ceb"])
  with pytest.raises(ValueError, match="declares no language"):
    sources.build_source(_spec([f]), tmp_path / "out")
  built = sources.build_source(_spec([f], lang="ceb"), tmp_path / "out", detect=["en", "ceb"])
  assert built.stats["detected"] == {} and set(built["train"].record_langs) == {"ceb"}


def test_rebuild_only_when_inputs_or_options_change(tmp_path):
  f = _write(tmp_path / "a.jsonl", [json.dumps({"text": t}) for t in _texts("en", 3)])
  b1 = sources.build_source(_spec([f]), tmp_path / "out", detect=["en", "de"])
  assert b1.built and b1.stats["detected"] == {"en": 3}
  # Same inputs and candidates: reused. Other candidates: the detector's choices may differ.
  assert not sources.build_source(_spec([f]), tmp_path / "out", detect=["de", "en"]).built
  assert sources.build_source(_spec([f]), tmp_path / "out", detect=["en", "fr"]).built
  assert sources.build_source(_spec([f]), tmp_path / "out", detect=["en", "fr"],
                             on_error="skip").built


@pytest.mark.e2e
def test_prepare_cli_builds_once_and_saves_statistics(tmp_path):
  untagged = _write(tmp_path / "web.jsonl", [json.dumps({"text": t}, ensure_ascii=False)
                                             for lang in ("en", "zh") for t in _texts(lang, 4)]
                    + ["{not json"])
  ceb = _write(tmp_path / "ceb.txt", _texts("ceb", 4))
  srcs = ["sample", {"paths": untagged, "detect": ["en", "zh"], "weight": 0.5},
          {"paths": ceb, "lang": "ceb"}]
  cmd = [sys.executable, "-m", "medmoe_jax.data", "prepare", "--config=configs/post_moe.py",
         f"--workdir={tmp_path / 'run'}", f"--config.data.sources={srcs!r}",
         "--config.data.on_error=skip"]
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  first = subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
  stats_file = tmp_path / "run" / "data" / "stats_post_moe.json"
  stats = json.loads(stats_file.read_text())
  web = stats["sources"]["web"]
  assert web["detected"] == {"en": 4, "zh": 4} and web["skipped"] == {"malformed_json": 1}
  assert stats["sources"]["ceb"]["documents"]["train"] == {"ceb": 3}
  assert stats["sources"]["sample"]["tokens"]["train"]["en"]["tokens"] > 0
  assert "building source 'web'" in first and "detector chose {'en': 4, 'zh': 4}" in first
  # TFDS's own lines would say it downloads; nothing is downloaded.
  assert "Downloading and preparing" not in first and "downloaded and prepared" not in first
  # The same config again (in-process, to save a second interpreter start): nothing is written.
  from conftest import load_config
  from medmoe_jax import config as cfg_lib
  from medmoe_jax.data import corpus, tokenizer
  c = load_config("post_moe")
  c.data.sources, c.data.on_error = srcs, "skip"
  stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "data").rglob("*") if p.is_file()}
  printed = []
  again = corpus.prepare(cfg_lib.data_spec(c, str(tmp_path / "run")), tokenizer.load_tokenizer("sample"), log=printed.append)
  assert again["built_now"] == [] and "already built (inputs unchanged): sample, web, ceb" in printed
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "data").rglob("*") if p.is_file()} == stamp


def test_apollo_style_files_with_language_from_path(tmp_path):
  # Apollo's corpus: JSON arrays of [question, answer] lists (or of strings), language in the name.
  qa = tmp_path / "Medical_Exam_en_sampled.json"
  qa.write_text(json.dumps([["Which organ makes erythropoietin?", "The kidney."],
                            ["Sign of puberty in boys?", "Testicular enlargement."]]), "utf-8")
  (tmp_path / "zh").mkdir()
  text = tmp_path / "zh" / "part-0.json"
  text.write_text(json.dumps(["高血压是一种慢性病。", "糖尿病需要控制血糖。"], ensure_ascii=False), "utf-8")
  built = sources.build_source(_spec([qa, text], lang="from_path"), tmp_path / "out",
                               detect=["en", "zh", "ar"], validation_every=0,
                               template=chat_lib.ChatTemplate("plain"))
  st = built.stats
  assert st["documents"]["train"] == {"en": 2, "zh": 2} and st["supervised"] == 2
  assert st["languages_from_paths"] == {str(qa): "en", str(text): "zh"}
  first = built["train"][0]
  assert first["text"] == "Which organ makes erythropoietin?\nThe kidney."
  assert first["prompt_spans"] == [[0, len("Which organ makes erythropoietin?\n")]]
  with pytest.raises(ValueError, match=r"ambiguous: 'en_zh_pairs' names \['en', 'zh'\]"):
    specs.lang_from_path("/x/en_zh_pairs.jsonl", ["en", "zh"])
  with pytest.raises(ValueError, match="found none of the languages"):
    specs.lang_from_path("/data/notes.txt", ["en", "zh"])
