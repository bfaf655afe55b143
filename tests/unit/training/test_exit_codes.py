"""faults.exit_codes in-process: each kind of fault -> one stderr line and its exit code; a bug ->
its traceback and a line saying so. (Real CLIs: tests/e2e/test_cli_errors.py.)"""
import errno

import jax
import pytest

from medmoe_jax.checkpoint_integrity import DamagedCheckpointError
from medmoe_jax.config import ConfigError
from medmoe_jax.training import faults


def _raise(e):
  def main(argv):
    raise e
  return main


@pytest.mark.parametrize("error, code, line", [
    (ConfigError("config.moe.top_k: too big"), 2, "error: config.moe.top_k: too big"),
    (DamagedCheckpointError("checkpoint step 4 in d is damaged:\nx"), 2,
     "error: checkpoint step 4 in d is damaged: x"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope"), 2,
     "error: [Errno 2] No such file or directory: '/nope'"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/results.json"), 4,
     "error: writing /out/results.json failed: OSError: No space left on device (disk full or a "
     "file-size limit); free space and run it again"),
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
    (SystemExit("error: --original: 'xx' is not in the sample"), 2,
     "error: --original: 'xx' is not in the sample"),
    (faults.Preempted("SIGTERM at step 3: checkpoint written", 3), 75,
     "preempted: SIGTERM at step 3: checkpoint written"),
])
def test_fault_is_one_line_and_its_code(capsys, error, code, line):
  with pytest.raises(SystemExit) as e:
    faults.exit_codes(_raise(error))([])
  assert e.value.code == code
  assert capsys.readouterr().err == line + "\n"


def test_a_lost_peer_is_try_again_and_a_bug_says_so(capsys, monkeypatch):
  lost = jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection closed by peer")
  with pytest.raises(SystemExit) as e:  # one process: not a lost peer, a bug
    faults.exit_codes(_raise(lost))([])
  err = capsys.readouterr().err
  assert e.value.code == faults.EXIT_BUG and "Traceback" in err
  assert err.strip().splitlines()[-1].startswith("internal error: the traceback above is a bug")
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(SystemExit) as e:
    faults.exit_codes(_raise(lost))([])
  assert e.value.code == faults.EXIT_PREEMPTED
  err = capsys.readouterr().err
  assert err.startswith("error: lost contact with another process of this job (UNKNOWN: Gloo")
  assert err.count("\n") == 1 and "rerun every process" in err
