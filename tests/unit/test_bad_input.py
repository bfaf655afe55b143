"""Bad input: each case fails before any compute with a one-line error that names what is wrong
and where (config key, file:line, path, parameter). Config cases go through config.validate,
everything else through Trainer.setup, which builds no program and runs no step."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax import sharding
from medmoe_jax.checkpoint import CheckpointMismatchError
from medmoe_jax.train import Trainer
from medmoe_jax.training import faults


def _one_line(e) -> str:
  msg = str(e.value)
  assert msg and "\n" not in msg, msg
  return msg


def _tiny():
  c = load_config("post_moe")
  c.model.update(dict(num_layers=2, d_model=32, num_heads=2, num_kv_heads=1, d_ff=64))
  c.moe.layers = "last:1"
  c.data.update(dict(seq_len=32, batch_size=8))
  c.mesh.data = -1
  return c


def _setup(c, workdir, data_dir=None):
  c.data.data_dir = str(data_dir or pathlib.Path(workdir).parent / "data")
  return Trainer(c, str(workdir), mesh=sharding.make_mesh(c, jax.devices()[:1])).setup()


@pytest.mark.parametrize("mutate, where, what", [
    (lambda c: c.languages.update(use=["en", "xx"]), "config.languages", "'xx'"),
    (lambda c: c.languages.update(table="major12", use=["en", "sw"]), "config.languages",
     "'sw' (Swahili) has no family in table 'major12'"),
    (lambda c: c.moe.update(top_k=8), "config.moe.top_k", "num_experts=7"),
    (lambda c: c.moe.update(layers="4"), "config.moe.layers", "4"),
    (lambda c: c.mesh.update(data=3), "config.mesh", "8 are present"),
    (lambda c: c.mesh.update(data=-1, expert=2), "config.mesh.expert", "num_experts=7"),
    (lambda c: c.data.update(seq_len=40960), "config.data.seq_len",
     "max_position_embeddings=32768"),
    (lambda c: c.model.update(rope_theta=0.0), "config.model.rope_theta", "> 0"),
    (lambda c: c.train.update(on_nonfinite="ignore"), "config.train.on_nonfinite", "'skip'"),
    (lambda c: c.update(name="../../etc"), "config.name", "path separators"),
])
def test_bad_config(mutate, where, what):
  c = load_config("post_moe")  # 4 layers, 7 experts, 8 (fake) devices
  mutate(c)
  with pytest.raises(cfg_lib.ConfigError) as e:
    cfg_lib.validate(c, 8)
  msg = _one_line(e)
  assert msg.startswith(where) and what in msg, msg


def test_vocab_smaller_than_the_tokenizer(tmp_path):
  c = _tiny()
  c.model.vocab_size = 512
  with pytest.raises(cfg_lib.ConfigError) as e:
    _setup(c, tmp_path / "run")
  msg = _one_line(e)
  assert "config.model.vocab_size=512" in msg and "(4096," in msg, msg


GOOD = '{"text": "fever and cough", "lang": "en"}\n'


@pytest.mark.parametrize("content, where, what", [
    ((GOOD + '{"text": "x", "lang": "en"\n').encode(), ":2:", "malformed JSON"),
    ((GOOD + '{"lang": "en", "body": "x"}\n').encode(), ":2:", "missing field 'text'"),
    (b"\n\n", ":1:", "empty file"),
    (GOOD.encode() + '{"text": "fièvre", "lang": "fr"}\n'.encode("latin-1"), ":2:",
     "not UTF-8 (byte 0xe8 at column 13)"),
])
def test_bad_data_file(tmp_path, content, where, what):
  path = tmp_path / "corpus.jsonl"
  path.write_bytes(content)
  c = _tiny()
  c.data.sources = str(path)
  c.languages.use = ["en", "fr"]
  with pytest.raises(faults.InputError) as e:
    _setup(c, tmp_path / "run")
  msg = _one_line(e)
  assert msg.startswith(f"{path}{where}") and what in msg, msg


@pytest.mark.parametrize("key, value", [
    ("sources", "/nonexistent/medical_*.jsonl"),
    ("tokenizer", "/nonexistent/tokenizer.model"),
])
def test_path_that_does_not_exist(tmp_path, key, value):
  c = _tiny()
  c.data[key] = value
  with pytest.raises(FileNotFoundError) as e:
    _setup(c, tmp_path / "run")
  assert value in _one_line(e)


@pytest.mark.parametrize("workdir", ["file/run", "/proc/medmoe_run"])
def test_workdir_not_writable(tmp_path, workdir):
  (tmp_path / "file").write_text("a file where a directory should be")
  workdir = str(tmp_path / workdir) if not workdir.startswith("/") else workdir
  with pytest.raises(faults.WorkdirError) as e:
    _setup(_tiny(), workdir, data_dir=tmp_path / "data")
  msg = _one_line(e)
  assert workdir in msg and "--workdir" in msg, msg
  assert not (tmp_path / "data").exists()  # refused before the data build


@pytest.mark.e2e
def test_checkpoint_that_does_not_match_the_config(tmp_path):
  t = _setup(_tiny(), tmp_path / "run")
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), t.abstract_state)
  assert t.checkpointer.save(4, zeros, {}) and t.checkpointer.wait()
  t.close()
  c = _tiny()
  c.model.d_ff = 96  # every FFN kernel changes shape; the first one in the tree is named
  with pytest.raises(CheckpointMismatchError) as e:
    _setup(c, tmp_path / "run")
  msg = _one_line(e)
  assert re.search(r"checkpoint step 4 in .*: params/segments/0/blocks/ffn/down_proj/kernel has "
                   r"shape \(1, 64, 32\) there but \(1, 96, 32\) in this config", msg), msg
  assert "config.json" in msg and "--workdir" in msg


@pytest.mark.e2e
def test_cli_prints_one_line_and_exits_2(tmp_path):
  bad = tmp_path / "corpus.jsonl"
  bad.write_text(GOOD + "{not json}\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  p = subprocess.run(
      [sys.executable, "-m", "medmoe_jax.train", "--config=configs/post_moe.py",
       f"--config.data.sources={bad}", "--config.mesh.data=1",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert p.returncode == faults.EXIT_INPUT, p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert p.stderr.strip().splitlines()[-1] == (
      f"error: {bad}:2: malformed JSON (Expecting property name enclosed in double quotes at "
      "column 2)")


LOAD_PATH_HAZARDS = re.compile(
    r"\bimport pickle\b|\bpickle\.loads?\(|\bcloudpickle\b|\bdill\b|\bmarshal\.loads?\(|"
    r"\beval\(|\bexec\(|\btorch\.load\(|allow_pickle\s*=\s*True|yaml\.load\(|\btarfile\b|"
    r"\bzipfile\b|\bshutil\.unpack_archive\b")


def test_no_pickle_eval_or_archive_extraction_in_the_package():
  # Checkpoints are Orbax (tensorstore + JSON), data is JSON/ArrayRecord, weights safetensors.
  # Configs are Python by design and are loaded by ml_collections, not by this package.
  hits = []
  for path in sorted((REPO / "medmoe_jax").rglob("*.py")):
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
      code = line.split("#", 1)[0]
      if LOAD_PATH_HAZARDS.search(code):
        hits.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
  assert not hits, hits
