"""Every CLI, fed bad input and damaged files: one line on stderr, the documented exit code, no
traceback (training/faults.exit_codes; README "Failure behaviour"). And a bug still shows its
traceback, with a line that says it is one.

Each case is one real `python -m ...` process that fails before any compute (a few seconds of
imports each); the cases run two at a time.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from medmoe_jax import checkpoint_integrity as integrity
from medmoe_jax.training import faults

TINY = ["--config.model.num_layers=2", "--config.moe.layers=last:1", "--config.model.d_model=32",
        "--config.model.num_heads=2", "--config.model.num_kv_heads=1", "--config.model.d_ff=64",
        "--config.data.seq_len=32", "--config.data.batch_size=8", "--config.mesh.data=1"]


def _damaged_run(root, unreadable=False):
  """A training workdir (config.json of the tiny model) whose only checkpoint, step 4, lost a
  file its manifest lists (unreadable: the file is there, mode 000; see _without_root_override)."""
  from conftest import load_config
  from medmoe_jax import config as cfg_lib
  c = load_config("post_moe")
  c.model.update(dict(num_layers=2, d_model=32, num_heads=2, num_kv_heads=1, d_ff=64))
  c.moe.layers = "last:1"
  step = root / "checkpoints" / "4"
  (step / "state").mkdir(parents=True)
  (step / "state" / "_METADATA").write_text("{}")
  integrity.write_manifest(step)
  if unreadable:
    os.chmod(step / "state" / "_METADATA", 0)
  else:
    os.remove(step / "state" / "_METADATA")
  (root / "config.json").write_text(cfg_lib.to_json(c))
  return root


def _cases(tmp):
  damaged = _damaged_run(tmp / "damaged")  # training moves its step aside: hf reads a copy
  damaged_hf = _damaged_run(tmp / "damaged_hf")
  unreadable = _damaged_run(tmp / "unreadable", unreadable=True)
  unreadable_hf = _damaged_run(tmp / "unreadable_hf", unreadable=True)
  bad_json = tmp / "bad_json"
  (bad_json / "checkpoints").mkdir(parents=True)
  (bad_json / "config.json").write_text('{"model": ')
  hf_bad = tmp / "hf_bad"
  hf_bad.mkdir()
  (hf_bad / "config.json").write_text('{"model_type": "qwen2",\n "hidden_size": }')
  hf_trunc = tmp / "hf_trunc"
  hf_trunc.mkdir()
  (hf_trunc / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
  (hf_trunc / "model.safetensors").write_bytes(b"\x10\x00\x00")
  bad_config = tmp / "bad_config.py"
  bad_config.write_text("def get_config(:\n")
  corpus = tmp / "corpus.jsonl"
  corpus.write_text('{"text": "a", "lang": "en"}\n{not json}\n')
  train = ["medmoe_jax.train", "--config=configs/post_moe.py", *TINY]
  ev = ["medmoe_jax.eval", "--config=configs/eval.py", f"--workdir={tmp / 'eval_out'}"]
  data = ["medmoe_jax.data", "prepare", "--config=configs/post_moe.py", f"--workdir={tmp / 'd'}"]
  hf = ["medmoe_jax.hf"]
  E, S = faults.EXIT_INPUT, faults.EXIT_SAVE_FAILED
  return {
      # name: (argv, exit code, the last stderr line must match this regex)
      "train: bad config value": (
          [*train, "--config.moe.top_k=99", f"--workdir={tmp / 'w1'}"], E,
          r"^error: config\.moe\.top_k"),
      "train: config file missing": (
          ["medmoe_jax.train", f"--config={tmp / 'nope.py'}"], E,
          rf"^error: --config: the config file could not be loaded \(.*No such file.*nope\.py"),
      "train: unknown config key": (
          [*train, "--config.model.no_such_key=3"], E,
          r"^error: command-line flags: no config key 'no_such_key'; check the --config\.<key>"),
      "train: config file with a syntax error": (
          ["medmoe_jax.train", f"--config={bad_config}"], E,
          r"^error: command-line flags: invalid syntax \(.*bad_config\.py, line 1\)"),
      "train: half the multi-process flags": (
          [*train, "--coordinator_address=127.0.0.1:1234"], E,
          r"^error: multi-process flags are all-or-nothing: also pass --num_processes"),
      "train: upcycle source missing": (
          [*train, f"--config.upcycle.from_={tmp / 'no_source'}", "--config.upcycle.method=none",
           f"--workdir={tmp / 'w2'}"], E, rf"^error: no checkpoint at {tmp / 'no_source'}"),
      "train: every checkpoint damaged": (
          [*train, f"--workdir={damaged}"], E,
          rf"^error: no intact checkpoint in {damaged / 'checkpoints'}: every step is damaged \(4"),
      "train: checkpoint file unreadable": (
          [*train, f"--workdir={unreadable}"], E,
          rf"^error: no intact checkpoint in {unreadable / 'checkpoints'}: every step is damaged"),
      "dry run: unknown topology": (
          [*train, "--dry_run", "--topology=v9-8"], E, r"^dry run failed: .*v9-8"),
      "eval: checkpoint path missing": (
          [*ev, f"--config.checkpoint={tmp / 'nothing'}"], E,
          rf"^error: config\.checkpoint: {tmp / 'nothing'} is not a directory"),
      "eval: config.json malformed": (
          [*ev, f"--config.checkpoint={bad_json}"], E,
          rf"^error: {bad_json / 'config.json'}:1: malformed JSON"),
      "eval: unknown task": (
          [*ev, f"--config.checkpoint={bad_json}", "--config.tasks=mcq,bogus"], E,
          r"^error: config\.tasks: 'mcq,bogus': use a comma-separated subset of mcq, perplexity, "
          r"routing$"),
      "data: malformed data file": (
          [*data, f"--config.data.sources={corpus}"], E, rf"^error: {corpus}:2: malformed JSON"),
      "data: disk full": (
          [*data, "--config.data.sources=sample"], S, r"^error: writing .* failed: .*File too large"),
      "hf: not a model directory": (
          [*hf, "import", f"--hf_dir={tmp / 'nothing'}", f"--out={tmp / 'o1'}"], E,
          r"^error: .*nothing: no config\.json"),
      "hf: config.json malformed": (
          [*hf, "import", f"--hf_dir={hf_bad}", f"--out={tmp / 'o2'}"], E,
          rf"^error: {hf_bad / 'config.json'}:2: malformed JSON"),
      "hf: truncated weights": (
          [*hf, "import", f"--hf_dir={hf_trunc}", f"--out={tmp / 'o3'}"], E,
          rf"^error: {hf_trunc / 'model.safetensors'}: not a safetensors file"),
      "hf: damaged checkpoint": (
          [*hf, "export", f"--checkpoint={damaged_hf}", f"--out={tmp / 'o4'}"], E,
          rf"^error: no intact checkpoint at {damaged_hf}: every step is damaged"),
      # Flag parsing (absl's own message would be two lines and exit 1, argparse's its usage).
      "train: unknown flag": (
          [*train, "--no_such_flag=1"], E,
          r"^error: command-line flags: Unknown command line flag 'no_such_flag'; --helpfull"),
      "dry run: flag value of the wrong type": (
          [*train, "--dry_run", "--num_devices=eight"], E,
          r"^error: command-line flags: flag --num_devices=eight: invalid literal for int"),
      "eval: unknown flag": (
          [*ev, "--no_such_flag"], E, r"^error: command-line flags: Unknown command line flag "
          r"'no_such_flag'"),
      "data: unknown flag": (
          [*data, "--no_such_flag"], E, r"^error: command-line flags: Unknown command line flag "
          r"'no_such_flag'"),
      "hf: unknown flag": (
          [*hf, "export", f"--checkpoint={tmp}", f"--out={tmp / 'o5'}", "--no_such_flag"], E,
          r"^error: command-line flags: python -m medmoe_jax\.hf: unrecognized arguments: "
          r"--no_such_flag; --help lists the flags$"),
      "experiment: unknown flag": (
          ["medmoe_jax.experiments.expand", f"--workdir={tmp / 'x2'}", "--no_such_flag"], E,
          r"^error: command-line flags: python -m medmoe_jax\.experiments\.expand: "
          r"unrecognized arguments: --no_such_flag"),
      "hf: checkpoint file unreadable": (
          [*hf, "export", f"--checkpoint={unreadable_hf}", f"--out={tmp / 'o6'}"], E,
          rf"^error: no intact checkpoint at {unreadable_hf}: every step is damaged"),
      "experiment: unknown language": (
          ["medmoe_jax.experiments.expand", "--quick", "--corpus=sample", "--original=en,xx",
           f"--workdir={tmp / 'x'}"], E, r"^error: --original: 'xx' is not in the embedded sample"),
  }


CASES = ["train: bad config value", "train: config file missing", "train: unknown config key",
         "train: config file with a syntax error", "train: half the multi-process flags", "train: upcycle source missing",
         "train: every checkpoint damaged", "train: checkpoint file unreadable",
         "dry run: unknown topology",
         "eval: checkpoint path missing", "eval: config.json malformed", "eval: unknown task",
         "data: malformed data file", "data: disk full", "hf: not a model directory",
         "hf: config.json malformed", "hf: truncated weights", "hf: damaged checkpoint",
         "train: unknown flag", "dry run: flag value of the wrong type", "eval: unknown flag",
         "data: unknown flag", "hf: unknown flag", "experiment: unknown flag",
         "hf: checkpoint file unreadable",
         "experiment: unknown language"]


def _small_files():  # RLIMIT_FSIZE: writes past 64 KiB fail with EFBIG (Python ignores SIGXFSZ)
  import resource
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))


def _without_root_override():
  """Root reads a mode-000 file anyway (CAP_DAC_OVERRIDE), and CI runs as root: drop the two
  capabilities that bypass file permissions from the bounding set, so the command (still uid 0,
  owning every file) gets the kernel's real EACCES. Not root: the mode alone does it."""
  if os.geteuid() != 0:
    return
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)
  for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; prctl(PR_CAPBSET_DROP=24)
    if libc.prctl(24, cap, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) needs CAP_SETPCAP")


def _run(argv, tmp, preexec_fn=None):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, preexec_fn=preexec_fn)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli")
  cases = _cases(tmp)
  assert list(cases) == CASES
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    preexec = {"data: disk full": _small_files, "train: checkpoint file unreadable":
               _without_root_override, "hf: checkpoint file unreadable": _without_root_override}
    futures = {name: pool.submit(_run, argv, tmp, preexec.get(name))
               for name, (argv, _, _) in cases.items()}
    return {name: (cases[name], f.result()) for name, f in futures.items()}, tmp


@pytest.mark.parametrize("name", CASES)
def test_cli_fault_is_one_line_and_its_exit_code(results, name):
  import re
  cases, tmp = results
  (argv, code, pattern), p = cases[name]
  assert "Traceback" not in p.stderr, p.stderr[-3000:]
  lines = [l for l in p.stderr.splitlines() if l.strip()]
  assert lines and re.search(pattern, lines[-1]), p.stderr[-3000:]
  assert p.returncode == code, p.stderr[-3000:]
  if "flag" in name:  # nothing ran before the flags were parsed: the error is all there is
    assert len(lines) == 1, p.stderr
  if name.endswith("checkpoint damaged"):
    # The damage report (one line naming step and file) comes before the final line.
    damaged = tmp / ("damaged_hf" if name.startswith("hf") else "damaged") / "checkpoints"
    assert any(re.match(rf"checkpoint step 4 in {damaged} is damaged: .*_METADATA is missing",
                        l) for l in lines), p.stderr
  if name.endswith("checkpoint file unreadable"):
    # A real EACCES: training moves the step aside, a reader (hf export) leaves it in place.
    root = tmp / ("unreadable_hf" if name.startswith("hf") else "unreadable") / "checkpoints"
    where = "left in place \\(read-only\\)" if name.startswith("hf") else (
        f"moved aside to {root / '4.damaged'}")
    assert [l for l in lines if re.fullmatch(
        rf"checkpoint step 4 in {root} is damaged: {root / '4' / 'state' / '_METADATA'} is "
        rf"unreadable \(Permission denied\); {where}", l)], p.stderr
    assert sorted(os.listdir(root)) == (["4"] if name.startswith("hf") else ["4.damaged"])


def test_a_bug_keeps_its_traceback_and_says_it_is_a_bug(tmp_path):
  # A bug, not input: the wrapper must not hide it behind one line.
  code = ("import sys; from medmoe_jax.training.faults import exit_codes\n"
          "def main(argv): return {}['no such key']\n"
          "exit_codes(main)(sys.argv)\n")
  p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == faults.EXIT_BUG
  assert "Traceback" in p.stderr and "KeyError: 'no such key'" in p.stderr
  assert p.stderr.strip().splitlines()[-1].startswith("internal error: the traceback above is a bug")
