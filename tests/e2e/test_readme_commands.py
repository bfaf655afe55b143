"""README.md and launch/README.md run as written: every command block, in order, from one fresh
working directory (configs/ and launch/ linked in, as in a checkout), each command must exit 0
with no traceback.

The READMEs are read at test time, so a block added there is run here. A block is a run of
4-space-indented lines; it is a command block when its first word is a command (python, pip,
bash, launch/..., sbatch), else it is code or a listing and is not run. In a command, optional
parts in brackets (`[--workdir=DIR]`) are left out, a trailing `# comment` is dropped and `\\`
continues a line.

One HTML comment right above a block may adjust it (documented in README.md, "Tests"):

    <!-- readme-test: train --config.train.steps=2; set OUT=eval_out -->

with `;`-separated clauses:
    MODULE ARGS        append ARGS to every `python -m medmoe_jax.MODULE` line (train, eval, data,
                       data.synthetic, hf, ...): the overrides that make a block tiny
    set NAME=VALUE     replace NAME by VALUE in the block's commands (placeholders such as OUT)
    skip REASON        do not run the block, and say why (the rest of the marker is the reason)
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

READMES = ("README.md", "launch/README.md")
COMMANDS = ("python", "pip", "bash", "launch/", "sbatch", "gcloud")
MARKER = re.compile(r"^<!--\s*readme-test:(.*?)-->\s*$")


def blocks(path):
  """[(first line number, marker text or None, [command, ...])] of one README's command blocks."""
  lines = (REPO / path).read_text(encoding="utf-8").split("\n")
  out, i = [], 0
  while i < len(lines):
    starts = lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()
                                             or MARKER.match(lines[i - 1].strip()))
    if not starts:
      i += 1
      continue
    marker = MARKER.match(lines[i - 1].strip()) if i else None
    j = i
    while j < len(lines) and (lines[j].startswith("    ") or (
        not lines[j].strip() and j + 1 < len(lines) and lines[j + 1].startswith("    "))):
      j += 1
    text = [l[4:] for l in lines[i:j]]
    if text[0].split()[0].startswith(COMMANDS):
      out.append((i + 1, marker.group(1).strip() if marker else None, _commands(text)))
    i = j
  return out


def _commands(text):
  joined, cmds = "", []
  for line in text:
    line = re.sub(r"\s+#\s.*$", "", line.rstrip())  # a trailing comment
    if line.endswith("\\"):
      joined += line[:-1] + " "
      continue
    joined += line
    cmd = re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]", "", joined)).strip()
    if cmd:  # a line of optional parts only is left out whole
      cmds.append(cmd)
    joined = ""
  return cmds


def parse_marker(marker):
  """-> (module -> extra args, {placeholder: value}, skip reason or None)."""
  extra, subst, skip = {}, {}, None
  clauses = [c.strip() for c in (marker or "").split(";") if c.strip()]
  for i, clause in enumerate(clauses):
    head, _, rest = clause.partition(" ")
    if head == "skip":  # the reason is the rest of the marker, semicolons included
      skip = "; ".join([rest.strip(), *clauses[i + 1:]]).strip("; ") or "no reason given"
      break
    if head == "set":
      for item in shlex.split(rest):
        name, _, value = item.partition("=")
        subst[name] = value
    else:
      extra[head] = rest.strip()
  return extra, subst, skip


def _apply(cmd, extra, subst):
  for name, value in subst.items():
    cmd = cmd.replace(name, value)
  m = re.match(r"python -m medmoe_jax\.([\w.]+)", cmd)
  if m and m.group(1) in extra:
    cmd = f"{cmd} {extra[m.group(1)]}"
  return cmd


ALL = [(path, line, marker, cmds) for path in READMES for line, marker, cmds in blocks(path)]


def test_the_readmes_have_command_blocks_and_markers_parse():
  assert len(ALL) >= 8
  for path, line, marker, _ in ALL:
    extra, _, skip = parse_marker(marker)
    assert skip is None or skip != "no reason given", f"{path}:{line}: skip needs a reason"
    assert all(re.fullmatch(r"[\w.]+", k) for k in extra), f"{path}:{line}: {marker}"
  # The convention itself: brackets dropped, comments dropped, continuations joined.
  assert _commands(["python -m a --x=1 [--y=2] \\", "    --z=3   # note"]) == ["python -m a --x=1 --z=3"]
  assert parse_marker("train --a=1 --b=2; set OUT=o DIR=d; skip needs a TPU; and a pod") == (
      {"train": "--a=1 --b=2"}, {"OUT": "o", "DIR": "d"}, "needs a TPU; and a pod")


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("readme")
  for name in ("configs", "launch"):
    os.symlink(REPO / name, d / name)
  return d


@pytest.mark.parametrize("path, line, marker, cmds", ALL, ids=[f"{p}:{l}" for p, l, _, _ in ALL])
def test_block_runs_as_written(fresh_dir, path, line, marker, cmds):
  extra, subst, skip = parse_marker(marker)
  if skip:
    pytest.skip(f"{path}:{line}: {skip}")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  for cmd in cmds:
    cmd = _apply(cmd, extra, subst)
    if cmd.startswith("python "):
      cmd = sys.executable + cmd[len("python"):]
    p = subprocess.run(["bash", "-c", cmd], cwd=fresh_dir, env=env, capture_output=True,
                       text=True, timeout=900)
    where = f"{path}:{line}: {cmd}\n{p.stderr[-3000:]}"
    assert p.returncode == 0, where
    assert "Traceback" not in p.stderr + p.stdout, where
