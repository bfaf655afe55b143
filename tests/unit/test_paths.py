"""Paths a user gives are made absolute once, relative to where the command runs."""
import os

from medmoe_jax import config as cfg_lib
from medmoe_jax import paths


def test_absolute_keeps_urls_and_empty(tmp_path):
  assert paths.absolute("a/b", str(tmp_path)) == str(tmp_path / "a" / "b")
  assert paths.absolute("gs://bucket/x") == "gs://bucket/x"
  assert paths.absolute("") == ""
  assert paths.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")


def test_training_config_paths_resolve_against_cwd(tmp_path):
  c = cfg_lib.base_config()
  c.lock()  # as --config gives it
  c.upcycle["from"] = "workdir/dense"
  c.data.data_dir = "shared/data"
  c.data.tokenizer = "tok/x.model"
  c.data.sources = ["sample", "a.jsonl", {"paths": ["x/*.json", "sample"], "lang": "en"}]
  paths.resolve_config_paths(c, str(tmp_path))
  assert c.upcycle["from"] == c.upcycle.from_ == str(tmp_path / "workdir" / "dense")
  assert c.data.data_dir == str(tmp_path / "shared" / "data")
  assert c.data.tokenizer == str(tmp_path / "tok" / "x.model")
  assert list(c.data.sources) == ["sample", str(tmp_path / "a.jsonl"),
                                  {"paths": [str(tmp_path / "x" / "*.json"), "sample"], "lang": "en"}]


def test_defaults_and_comma_separated_sources(tmp_path):
  c = cfg_lib.base_config()
  paths.resolve_config_paths(c, str(tmp_path))
  assert (c.upcycle["from"], c.data.data_dir, c.data.tokenizer, c.data.sources) == ("", "", "sample", "sample")
  c.data.sources = "a.jsonl, b/*.txt"
  paths.resolve_config_paths(c, str(tmp_path))
  assert c.data.sources == f"{tmp_path / 'a.jsonl'},{tmp_path / 'b' / '*.txt'}"


def test_eval_config_paths(tmp_path):
  from conftest import load_config
  c = load_config("eval")
  c.checkpoint, c.baseline_checkpoint = "workdir/post_moe", "workdir/dense/checkpoints/3"
  c.mcq.files = "sample"
  paths.resolve_eval_paths(c, str(tmp_path))
  assert c.checkpoint == str(tmp_path / "workdir" / "post_moe")
  assert c.baseline_checkpoint == str(tmp_path / "workdir" / "dense" / "checkpoints" / "3")
  assert c.mcq.files == "sample"
  c.mcq.files = "mcq/*.json,b.jsonl"
  paths.resolve_eval_paths(c, str(tmp_path))
  assert c.mcq.files == f"{tmp_path / 'mcq' / '*.json'},{tmp_path / 'b.jsonl'}"
